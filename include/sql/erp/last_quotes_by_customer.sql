-- Last quote date of some customers only (incremental runs). Same contract as last_quotes.sql.
-- @column customer_code   int   ERP customer code
-- @column last_quote_date date  most recent quote on or before the business date
-- @param  business_date   date  quotes after the run's business date are ignored (backfills)
-- @param  customer_codes  int[] the customers to read
SELECT customer_code, MAX(quote_date) AS last_quote_date
FROM quote
WHERE customer_code IN :customer_codes
  AND quote_date <= :business_date
GROUP BY customer_code
