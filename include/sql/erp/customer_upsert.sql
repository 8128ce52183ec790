-- WRITE contract of crm_erp_account_sync: insert or update one ERP customer from a CRM account that
-- satisfies every integration rule. Run once per account inside one ERP transaction (all or nothing).
-- Adapt the statement to your ERP (its customer table, an interface/staging table the ERP imports, or a
-- stored procedure call); keep the parameter names and types. Null only where the type ends in `?`.
-- Only rows that differ from customers_by_code.sql are sent; mobile_phone and created_at of an existing
-- customer are left as the ERP has them.
-- @param code                  int       ERP customer code: the account's, or a new one (customer_next_code.sql)
-- @param company_code          str       CRM company code (crm_company.code): the ERP establishment
-- @param name                  str       company name (razão social) / full name
-- @param short_name            str       the ERP key (nome-abrev): unique among ERP customers
-- @param tax_id                str       CPF (PF) or CNPJ (PJ), digits, check digits verified
-- @param person_type           str       PF | PJ
-- @param email                 str
-- @param group_id              int       customer group (known to the ERP)
-- @param representative_id     int       sales representative (known to the ERP)
-- @param carrier_id            int       carrier (known to the ERP)
-- @param bearer_id             int       bearer / portador (known to the ERP)
-- @param payment_condition_id  int       payment condition (known to the ERP)
-- @param phone1                str?      CRM phone of type TELEFONE_ERP1 (other phone types are never sent)
-- @param phone2                str?      TELEFONE_ERP2
-- @param fax1                  str?      FAX_ERP1
-- @param fax2                  str?      FAX_ERP2
-- @param address               str       correspondence address: street, number, complement
-- @param district              str?
-- @param city                  str
-- @param state                 str?
-- @param postal_code           str?
-- @param country               str       ISO 3166-1 alpha-2
-- @param notes                 str?      CRM observations of type 'Integração', oldest first (others stay in the CRM)
-- @param written_at            datetime  the run's time (UTC): created_at of a new customer, updated_at of both
INSERT INTO customer (
    code, company_code, name, short_name, tax_id, person_type, email, group_id, representative_id, carrier_id,
    bearer_id, payment_condition_id, phone1, phone2, fax1, fax2, address, district, city, state, postal_code,
    country, notes, created_at, updated_at
) VALUES (
    :code, :company_code, :name, :short_name, :tax_id, :person_type, :email, :group_id, :representative_id,
    :carrier_id, :bearer_id, :payment_condition_id, :phone1, :phone2, :fax1, :fax2, :address, :district, :city,
    :state, :postal_code, :country, :notes, :written_at, :written_at
)
ON CONFLICT (code) DO UPDATE SET
    company_code = excluded.company_code, name = excluded.name, short_name = excluded.short_name,
    tax_id = excluded.tax_id, person_type = excluded.person_type, email = excluded.email,
    group_id = excluded.group_id, representative_id = excluded.representative_id, carrier_id = excluded.carrier_id,
    bearer_id = excluded.bearer_id, payment_condition_id = excluded.payment_condition_id,
    phone1 = excluded.phone1, phone2 = excluded.phone2, fax1 = excluded.fax1, fax2 = excluded.fax2,
    address = excluded.address, district = excluded.district, city = excluded.city, state = excluded.state,
    postal_code = excluded.postal_code, country = excluded.country, notes = excluded.notes,
    updated_at = excluded.updated_at
