-- High-water mark of the ERP purchase data, read before the extraction; the next incremental
-- run looks at rows written at or after it. Null on an empty ERP.
-- @column watermark datetime?  latest updated_at over invoices and quotes
SELECT MAX(m) AS watermark FROM (
    SELECT MAX(updated_at) AS m FROM invoice
    UNION ALL
    SELECT MAX(updated_at) AS m FROM quote
) AS t
