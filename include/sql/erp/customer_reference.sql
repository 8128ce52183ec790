-- Ids the ERP knows in the reference tables a CRM account must name before it is sent
-- (crm_erp_account_sync: "customer group, representative, carrier, bearer and payment condition
-- present and known to the ERP"). `kind` is the crm-batch name of the table; keep these five values.
-- @column kind  str  customer_group | representative | carrier | bearer | payment_condition
-- @column id    int  the id the CRM account stores in crm_account.erp_<kind>_id
SELECT 'customer_group' AS kind, id FROM customer_group
UNION ALL SELECT 'representative', id FROM representative
UNION ALL SELECT 'carrier', id FROM carrier
UNION ALL SELECT 'bearer', id FROM bearer
UNION ALL SELECT 'payment_condition', id FROM payment_condition
