-- The receivables of a planned notice that are STILL open, read right before the e-mail is sent
-- (crm_overdue_invoice_notices): one paid since the plan step is not returned, so it is left out.
-- Same columns as overdue_receivables.sql; adapt the FROM/WHERE the same way.
-- @column receivable_id   int     unique id of the receivable (installment)
-- @column customer_code   int     ERP customer code (crm_account.erp_customer_code)
-- @column document_number str     the number the customer sees (invoice number / installment)
-- @column invoice_number  str?    the ERP invoice (series-number) the receivable comes from, if any
-- @column invoice_id      int?    ERP invoice id (detailed PDFs list its items)
-- @column issue_date      date    issue date
-- @column due_date        date    due date
-- @column amount          float   amount of the receivable
-- @column paid_amount     float   already paid (partial payments)
-- @column payment_method  str     boleto, pix_carne or other
-- @column bearer          str?    bank / wallet that carries the bill
-- @param  receivable_ids  int[]   the ids stored in the notice's ledger payload
SELECT r.id AS receivable_id,
       r.customer_code,
       r.document_number,
       CASE WHEN i.id IS NULL THEN NULL ELSE i.series || '-' || i.number END AS invoice_number,
       r.invoice_id,
       r.issue_date,
       r.due_date,
       r.amount,
       r.paid_amount,
       r.payment_method,
       b.name AS bearer
FROM receivable r
LEFT JOIN invoice i ON i.id = r.invoice_id
LEFT JOIN bearer b ON b.id = r.bearer_id
WHERE r.id IN :receivable_ids
  AND r.status IN ('open', 'in_progress')
  AND NOT r.paid
ORDER BY r.due_date, r.id
