-- Unpaid receivables due on one date, of some companies (crm_whatsapp_due_notices, TOTVS Moda process 103).
-- Which of them get a notice is decided in Python (crm.routines.whatsapp.message_type_of): boleto
-- bills that are open or in progress ("due boleto"), PIX carnê installments in progress ("due carnê").
-- Adapt the FROM/WHERE to your ERP; keep the column names and types below.
-- @column receivable_id   int     unique id of the receivable (installment): one notice per id and due date
-- @column customer_code   int     ERP customer code (crm_account.erp_customer_code)
-- @column company_code    str     ERP company (crm_company.code): whose message configuration applies
-- @column document_number str     the number the customer sees
-- @column due_date        date    due date
-- @column amount          float   amount of the receivable
-- @column paid_amount     float   already paid (partial payments): the notice shows what is still open
-- @column payment_method  str     boleto, pix_carne or other
-- @column status          str     open, in_progress, paid, cancelled
-- @column digitable_line  str?    boleto digitable line ("linha digitável")
-- @column pix_code        str?    PIX copy-and-paste code of the carnê installment
-- @param  due_date        date    business date + days before due
-- @param  company_codes   str[]   the companies of this processing
--
-- The reference ERP schema keeps neither the digitable line nor the PIX code: the demo derives
-- placeholders from the document number. Map your ERP's columns here.
SELECT r.id AS receivable_id,
       r.customer_code,
       r.company_code,
       r.document_number,
       r.due_date,
       r.amount,
       r.paid_amount,
       r.payment_method,
       r.status,
       CASE WHEN r.payment_method = 'boleto'
            THEN '34191.09008 ' || r.document_number || ' ' || r.customer_code END AS digitable_line,
       CASE WHEN r.payment_method = 'pix_carne'
            THEN '00020126BR.GOV.BCB.PIX-' || r.company_code || '-' || r.id END AS pix_code
FROM receivable r
WHERE r.due_date = :due_date
  AND r.company_code IN :company_codes
  AND r.status IN ('open', 'in_progress')
  AND NOT r.paid
ORDER BY r.company_code, r.customer_code, r.id
