-- Invoices for the purchase profile (crm_account_purchase_profile, TOTVS crm338), all customers.
-- Adapt the FROM/WHERE to your ERP; keep the column names and types below.
-- @column invoice_id     int    unique id in entry order; breaks ties between same-day invoices
-- @column customer_code  int    ERP customer code (crm_account.erp_customer_code)
-- @column issue_date     date   issue date of the invoice
-- @column total_value    float  total value of the invoice
-- @column invoice_number str    invoice number as shown to users
-- @column cancelled      bool   cancelled invoices do not count as purchases
-- @param  business_date  date   invoices issued after the run's business date are ignored (backfills)
SELECT id AS invoice_id,
       customer_code,
       issue_date,
       total_value,
       number AS invoice_number,
       cancelled
FROM invoice
WHERE issue_date <= :business_date
