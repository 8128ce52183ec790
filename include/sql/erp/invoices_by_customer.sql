-- Invoices of some customers only (incremental purchase-profile runs). Same contract as invoices.sql.
-- @column invoice_id     int    unique id in entry order; breaks ties between same-day invoices
-- @column customer_code  int    ERP customer code (crm_account.erp_customer_code)
-- @column issue_date     date   issue date of the invoice
-- @column total_value    float  total value of the invoice
-- @column invoice_number str    invoice number as shown to users
-- @column cancelled      bool   cancelled invoices do not count as purchases
-- @param  business_date  date   invoices issued after the run's business date are ignored (backfills)
-- @param  customer_codes int[]  the customers to read (bound as IN (...), in batches)
SELECT id AS invoice_id,
       customer_code,
       issue_date,
       total_value,
       number AS invoice_number,
       cancelled
FROM invoice
WHERE customer_code IN :customer_codes
  AND +issue_date <= :business_date  -- `+`: look customers up by customer_code, never scan by date
