-- Beneficiaries of the health-plan system (GP) with their contract, for crm_account_status (source gp).
-- Map your GP's status values to 'active', 'suspended' or 'cancelled' here: anything but 'active'
-- makes the account Inactive GP. One row per beneficiary code.
-- @column beneficiary_code   str    the GP's beneficiary code (crm_account.gp_beneficiary_code)
-- @column beneficiary_status str    'active', 'suspended' or 'cancelled'
-- @column contract_status    str    status of the beneficiary's contract, same values
-- @column contract_start     date   the contract covers the account from this date
-- @column contract_end       date?  and up to this date (null: open-ended)
SELECT b.code AS beneficiary_code,
       b.status AS beneficiary_status,
       c.status AS contract_status,
       c.start_date AS contract_start,
       c.end_date AS contract_end
FROM beneficiary b
JOIN contract c ON c.id = b.contract_id
