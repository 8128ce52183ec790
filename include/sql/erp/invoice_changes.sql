-- The changed invoices themselves (incremental purchase-profile runs): the same rows purchase_changes.sql
-- counts, so an incremental run can add the new ones to the stored profiles without re-reading every
-- invoice of those customers. The columns of invoices.sql and updated_at. Not limited to the business date on purpose:
-- an invoice re-dated past it must still be seen (the routine ignores the later ones when it counts).
-- Needs indexes on invoice(updated_at) and invoice(issue_date) to stay cheap.
-- @column invoice_id     int    unique id in entry order, never reused; breaks ties between same-day invoices
-- @column customer_code  int    ERP customer code (crm_account.erp_customer_code)
-- @column issue_date     date   issue date of the invoice
-- @column total_value    float  total value of the invoice
-- @column invoice_number str    invoice number as shown to users
-- @column cancelled      bool   cancelled invoices do not count as purchases
-- @column updated_at     datetime  when the row was last written (tells a changed row from one already read)
-- @param  since          datetime  the previous run's watermark (rows written at or after it)
-- @param  window_start   date      the previous run's business date (exclusive)
-- @param  business_date  date      this run's business date (inclusive)
SELECT id AS invoice_id,
       customer_code,
       issue_date,
       total_value,
       number AS invoice_number,
       cancelled,
       updated_at
FROM invoice
WHERE updated_at >= :since OR (issue_date > :window_start AND issue_date <= :business_date)
