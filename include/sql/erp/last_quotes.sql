-- Last quote date per customer (purchase profile), all customers: one row per customer.
-- @column customer_code   int   ERP customer code
-- @column last_quote_date date  most recent quote on or before the business date
-- @param  business_date   date  quotes after the run's business date are ignored (backfills)
SELECT customer_code, MAX(quote_date) AS last_quote_date
FROM quote
WHERE quote_date <= :business_date
GROUP BY customer_code
