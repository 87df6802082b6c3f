-- Delivery alerts (SPEC.md, "Failure breakdown and alerts"): each criterion a delivery
-- crossed, raised at most once per criterion and delivery per day (the key says so).

CREATE TABLE delivery_alerts (
    delivery_id bigint NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    criterion   smallint NOT NULL,
    raise_day   date NOT NULL,
    raise_time  timestamptz NOT NULL,
    value       double precision NOT NULL,
    threshold   double precision NOT NULL,
    message     text NOT NULL,
    -- Whether the rest of the delivery was stopped for it.
    stopped     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (delivery_id, criterion, raise_day)
);
-- Every delivery's alerts, newest first.
CREATE INDEX delivery_alerts_time_idx ON delivery_alerts (raise_time, delivery_id, criterion);
