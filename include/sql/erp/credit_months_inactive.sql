-- "Months inactive" of each customer from the ERP credit info (TOTVS CM0102 "Meses Inativo"), for
-- crm_account_status: a customer without a purchase in that many months is Inactive ERP. Customers
-- without a row, or with a null/zero value, get the routine's configured default.
-- @column customer_code   int   ERP customer code (crm_account.erp_customer_code)
-- @column months_inactive int?  months without purchase after which the customer counts as inactive
SELECT customer_code, months_inactive
FROM credit_info
