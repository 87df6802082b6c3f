-- Citus-ready keys (docs/scaling.md): the delivery is the distribution key, so every
-- primary or unique key of a per-delivery table includes delivery_id, and a key unique
-- across deliveries gets a table of its own, keyed by it.

-- Feedback events: an event id is unique within its delivery.
ALTER TABLE feedback_events DROP CONSTRAINT feedback_events_pkey;
ALTER TABLE feedback_events ADD CONSTRAINT feedback_events_pkey
    PRIMARY KEY (delivery_id, event_id);

-- Sending logs: the key leads with the delivery, which makes the old
-- (delivery_id, message_id) index redundant. message_id stays an identity,
-- unique on its own, and the MTA's idempotency key.
ALTER TABLE sending_logs DROP CONSTRAINT sending_logs_pkey;
ALTER TABLE sending_logs ADD CONSTRAINT sending_logs_pkey PRIMARY KEY (delivery_id, message_id);
DROP INDEX sending_logs_delivery_idx;

-- The request ids of deliveries: their own table, written in the same transaction as
-- the delivery it names.
CREATE TABLE delivery_requests (
    request_id  text PRIMARY KEY,
    delivery_id bigint NOT NULL
);
INSERT INTO delivery_requests (request_id, delivery_id)
SELECT request_id, id FROM deliveries WHERE request_id IS NOT NULL;
ALTER TABLE deliveries DROP COLUMN request_id;
