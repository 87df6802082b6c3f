-- Who did what: idempotency keys scoped to the operator who sent them, with a digest
-- of the request they answered; the creator of deliveries and recurring deliveries;
-- and a recurring delivery's own state (paused, cancelled).

ALTER TABLE delivery_requests ADD COLUMN operator text NOT NULL DEFAULT '';
ALTER TABLE delivery_requests ALTER COLUMN operator DROP DEFAULT;
ALTER TABLE delivery_requests ADD COLUMN request_digest bytea;
ALTER TABLE delivery_requests DROP CONSTRAINT delivery_requests_pkey;
ALTER TABLE delivery_requests ADD CONSTRAINT delivery_requests_pkey
    PRIMARY KEY (request_id, operator);

ALTER TABLE deliveries ADD COLUMN created_by text;

ALTER TABLE recurring_deliveries ADD COLUMN created_by text;
ALTER TABLE recurring_deliveries ADD COLUMN request_digest bytea;
ALTER TABLE recurring_deliveries ADD COLUMN state text NOT NULL DEFAULT {RecurringState.ACTIVE}
    CHECK (state IN ({RecurringState.ACTIVE}, {RecurringState.PAUSED},
                     {RecurringState.CANCELLED}));
ALTER TABLE recurring_deliveries DROP CONSTRAINT recurring_deliveries_request_id_key;
ALTER TABLE recurring_deliveries ADD CONSTRAINT recurring_deliveries_request_id_key
    UNIQUE (created_by, request_id);
