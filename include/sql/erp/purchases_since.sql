-- Purchases per customer within a window of issue dates (crm_account_status: last purchase within
-- "months inactive"; crm_class_transition: value and count in the last N months). One row per customer
-- with at least one non-cancelled invoice issued from `since` to `business_date`, both inclusive.
-- Aggregated in the ERP on purpose: a routine reads one row per customer, not every invoice.
-- Needs an index on invoice(issue_date) to stay cheap.
-- @column customer_code      int    ERP customer code (crm_account.erp_customer_code)
-- @column purchase_count     int    non-cancelled invoices issued in the window
-- @column purchase_value     float  their total value
-- @column last_purchase_date date   the latest issue date among them
-- @param  since              date   first issue date of the window (inclusive)
-- @param  business_date      date   last issue date of the window (inclusive): the run's business date
SELECT customer_code,
       COUNT(*) AS purchase_count,
       SUM(total_value) AS purchase_value,
       MAX(issue_date) AS last_purchase_date
FROM invoice
WHERE NOT cancelled
  AND issue_date >= :since
  AND issue_date <= :business_date
GROUP BY customer_code
