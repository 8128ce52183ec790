-- Items of ERP invoices, for the detailed invoice PDF of crm_overdue_invoice_notices.
-- @column invoice_id    int    ERP invoice id
-- @column line          int    line number
-- @column product_code  str    product code / description
-- @column quantity      float  quantity
-- @column unit_price    float  unit price
-- @param  invoice_ids   int[]  invoices of the receivables being sent
SELECT invoice_id, line, product_code, quantity, unit_price
FROM invoice_item
WHERE invoice_id IN :invoice_ids
ORDER BY invoice_id, line
