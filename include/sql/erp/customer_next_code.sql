-- The first free ERP customer code: crm_erp_account_sync numbers new customers from it, in account order.
-- A real ERP usually has its own sequence or numbering program: return its next value here instead
-- (e.g. SELECT nextval('customer_code_seq') AS next_code on PostgreSQL, when one is enough per run).
-- @column next_code  int  a code no customer has, above every existing one
SELECT COALESCE(MAX(code), 0) + 1 AS next_code FROM customer
