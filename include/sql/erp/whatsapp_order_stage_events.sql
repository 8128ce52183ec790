-- Order-stage events of a time window (crm_whatsapp_order_stages): orders of the "infinite shelf"
-- and OMNI channels only, as in TOTVS Moda. Timestamps are naive UTC, like every CRM timestamp.
-- Adapt the FROM/WHERE (and the channel list) to your ERP; keep the column names and types below.
-- @column event_id        int       unique id of the stage event
-- @column order_id        int       ERP order id (with the stage: the notice's business key)
-- @column order_number    str       the number the customer sees
-- @column customer_code   int       ERP customer code (crm_account.erp_customer_code)
-- @column company_code    str       ERP company (crm_company.code): whose configuration applies
-- @column channel         str       sales channel of the order
-- @column stage           str       the stage reached: configured as message type 'order_stage:<stage>'
-- @column occurred_at     datetime  when the order reached the stage
-- @column total_value     float     order total
-- @column carrier         str?      carrier that delivers (the customer's carrier in the reference ERP)
-- @column invoice_number  str?      invoice of the order, where the ERP links them (not the reference ERP)
-- @param  since           datetime  events after this moment (the previous run's watermark minus an overlap)
-- @param  until           datetime  events up to this moment (the run's own time)
SELECT e.id AS event_id,
       o.id AS order_id,
       o.order_number,
       o.customer_code,
       o.company_code,
       o.channel,
       e.stage,
       e.occurred_at,
       o.total_value,
       ca.name AS carrier,
       NULL AS invoice_number
FROM order_stage_event e
JOIN sales_order o ON o.id = e.order_id
LEFT JOIN customer c ON c.code = o.customer_code
LEFT JOIN carrier ca ON ca.id = c.carrier_id
WHERE e.occurred_at > :since
  AND e.occurred_at <= :until
  AND o.channel IN ('infinite_shelf', 'omni')
ORDER BY e.occurred_at, e.id
