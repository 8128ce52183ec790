-- Invoices of some customers only (incremental purchase-profile runs). Same contract as invoices.sql.
-- @column invoice_id     int    unique id in entry order; breaks ties between same-day invoices
-- @column customer_code  int    ERP customer code (crm_account.erp_customer_code)
-- @column issue_date     date   issue date of the invoice
-- @column total_value    float  total value of the invoice
-- @column invoice_number str    invoice number as shown to users
-- @column cancelled      bool   cancelled invoices do not count as purchases
-- @param  business_date  date   invoices issued after the run's business date are ignored (backfills)
-- @param  customer_codes int[]  the customers to read (bound as IN (...), in batches)
--
-- COALESCE(issue_date, issue_date) is issue_date (the column is not null) in a form no index can serve,
-- so the planner picks between the customer_code index and a table scan. Given a plain issue_date and a
-- batch of thousands of customers, SQLite walks the issue_date index over nearly the whole table instead
-- (1.6x slower than a scan at 5,000 of 20,000 customers). Portable on purpose: SQLite's `+issue_date`
-- fails on PostgreSQL, and CAST(issue_date AS DATE) is a NUMERIC cast in SQLite (2026, not a date).
SELECT id AS invoice_id,
       customer_code,
       issue_date,
       total_value,
       number AS invoice_number,
       cancelled
FROM invoice
WHERE customer_code IN :customer_codes
  AND COALESCE(issue_date, issue_date) <= :business_date
