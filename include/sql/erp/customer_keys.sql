-- Every ERP customer's key (short name) and document, for crm_erp_account_sync: a CRM account may not
-- take a short name another ERP customer has (compared trimmed and case-insensitive), and an account
-- without an ERP code whose short name and CPF/CNPJ match one customer is that customer (adopts its code).
-- @column code        int   ERP customer code (cod-emitente)
-- @column short_name  str?  the ERP's key (nome-abrev)
-- @column tax_id      str?  CPF/CNPJ, digits with or without the mask
SELECT code, short_name, tax_id FROM customer
