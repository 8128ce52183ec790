-- The current values of the ERP customers crm_erp_account_sync is about to write, so it writes only
-- what differs (a re-run changes nothing). Same names as the parameters of customer_upsert.sql.
-- @column code                  int
-- @column company_code          str
-- @column name                  str
-- @column short_name            str?
-- @column tax_id                str?
-- @column person_type           str
-- @column email                 str?
-- @column group_id              int?
-- @column representative_id     int?
-- @column carrier_id            int?
-- @column bearer_id             int?
-- @column payment_condition_id  int?
-- @column phone1                str?
-- @column phone2                str?
-- @column fax1                  str?
-- @column fax2                  str?
-- @column address               str?
-- @column district              str?
-- @column city                  str?
-- @column state                 str?
-- @column postal_code           str?
-- @column country               str?
-- @column notes                 str?
-- @param  codes                 int[]  ERP customer codes
SELECT code, company_code, name, short_name, tax_id, person_type, email, group_id, representative_id,
       carrier_id, bearer_id, payment_condition_id, phone1, phone2, fax1, fax2, address, district, city,
       state, postal_code, country, notes
FROM customer
WHERE code IN :codes
