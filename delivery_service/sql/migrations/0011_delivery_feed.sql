-- The delivery event feed (docs/events.md): each transaction that changes a delivery's
-- messages writes one row per delivery and kind of change, with the ids it changed,
-- under its transaction id. Rows are read in (xid, seq) order and only below the oldest
-- transaction still in flight, so a row never appears behind a position already served.
CREATE TABLE delivery_feed (
    delivery_id bigint NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    -- What wrote it: 1 the relay, 2 the feedback ingest, 3 the end of the validity.
    source      smallint NOT NULL,
    write_time  timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Messages relayed or expired.
    message_ids bigint[] NOT NULL DEFAULT '{}',
    -- Feedback events logged.
    event_ids   text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (delivery_id, xid, seq)
);
-- Every delivery's feed, in order.
CREATE INDEX delivery_feed_order_idx ON delivery_feed (xid, seq);
