-- Purchases per customer in two nested windows of issue dates that end on the business date, read in
-- one scan (crm_class_transition: value and count in the last N months, for two N at once: a second
-- GROUP BY over the shorter window would sort most of the same invoices again). One row per customer
-- with at least one non-cancelled invoice issued from `since` to `business_date`, both inclusive; the
-- `recent_` columns count those of them issued on or after `recent_since` (zero when none).
-- Aggregated in the ERP on purpose: a routine reads one row per customer, not every invoice.
-- Needs an index on invoice(issue_date) to stay cheap.
-- @column customer_code      int    ERP customer code (crm_account.erp_customer_code)
-- @column purchase_count     int    non-cancelled invoices issued in the window
-- @column purchase_value     float  their total value
-- @column recent_count       int    those of them issued on or after `recent_since`
-- @column recent_value       float  their total value (zero when none)
-- @param  since              date   first issue date of the longer window (inclusive)
-- @param  recent_since       date   first issue date of the shorter window (inclusive; not before `since`)
-- @param  business_date      date   last issue date of both windows (inclusive): the run's business date
SELECT customer_code,
       COUNT(*) AS purchase_count,
       SUM(total_value) AS purchase_value,
       COUNT(CASE WHEN issue_date >= :recent_since THEN 1 END) AS recent_count,
       SUM(CASE WHEN issue_date >= :recent_since THEN total_value ELSE 0 END) AS recent_value
FROM invoice
WHERE NOT cancelled
  AND issue_date >= :since
  AND issue_date <= :business_date
GROUP BY customer_code
