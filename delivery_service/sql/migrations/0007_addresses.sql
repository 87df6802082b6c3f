-- Addresses learn from feedback (SPEC.md): each address's entry, and the history it is
-- folded from (delivery_service.domain.quarantine); complaints and the MTA's SMTP reply
-- on the sending logs and feedback events. The profile's quarantine flag becomes a
-- quarantine of its address by hand: the address table is the one source of truth.

ALTER TABLE sending_logs
    ADD COLUMN complained boolean NOT NULL DEFAULT false,
    ADD COLUMN smtp_code integer NOT NULL DEFAULT 0,
    ADD COLUMN smtp_status text NOT NULL DEFAULT '',
    ADD COLUMN smtp_text text NOT NULL DEFAULT '';
ALTER TABLE feedback_events
    ADD COLUMN smtp_code integer NOT NULL DEFAULT 0,
    ADD COLUMN smtp_status text NOT NULL DEFAULT '',
    ADD COLUMN smtp_text text NOT NULL DEFAULT '';
ALTER TABLE delivery_counters ADD COLUMN complained bigint NOT NULL DEFAULT 0;

-- One row per address (lower case) that feedback or an operator ever spoke of.
CREATE TABLE addresses (
    address          text PRIMARY KEY,
    status           smallint NOT NULL DEFAULT {AddressStatus.VALID},
    error_count      integer NOT NULL DEFAULT 0,
    first_error_time timestamptz,
    last_error_time  timestamptz,
    failure_type     smallint NOT NULL DEFAULT 0,
    failure_reason   smallint NOT NULL DEFAULT 0,
    smtp_code        integer NOT NULL DEFAULT 0,
    smtp_status      text NOT NULL DEFAULT '',
    smtp_text        text NOT NULL DEFAULT '',
    -- The delivery and message whose feedback made the last change (0: by hand).
    delivery_id      bigint NOT NULL DEFAULT 0,
    message_id       bigint NOT NULL DEFAULT 0,
    update_time      timestamptz,
    changed_by       text NOT NULL DEFAULT ''
);
-- Preparation's lookup of the addresses it drops.
CREATE INDEX addresses_excluded_idx ON addresses (address)
    WHERE status IN ({AddressStatus.QUARANTINED}, {AddressStatus.DENYLISTED});
-- Listings, most recently changed first.
CREATE INDEX addresses_changed_idx ON addresses (update_time, address)
    WHERE update_time IS NOT NULL;
-- The cleanup round's timed releases.
CREATE INDEX addresses_erroneous_idx ON addresses (last_error_time)
    WHERE status = {AddressStatus.ERRONEOUS};

-- The events an address's entry is folded from, in (event_time, delivery_id, event_id)
-- order; `after` is the entry after the event (null if it changed nothing), where a
-- fold starts again when an earlier event arrives late.
CREATE TABLE address_events (
    address        text NOT NULL,
    event_time     timestamptz NOT NULL,
    delivery_id    bigint NOT NULL,
    event_id       text NOT NULL,
    message_id     bigint NOT NULL DEFAULT 0,
    signal         smallint NOT NULL,
    failure_type   smallint NOT NULL DEFAULT 0,
    failure_reason smallint NOT NULL DEFAULT 0,
    smtp_code      integer NOT NULL DEFAULT 0,
    smtp_status    text NOT NULL DEFAULT '',
    smtp_text      text NOT NULL DEFAULT '',
    changed_by     text NOT NULL,
    after          jsonb,
    CONSTRAINT address_events_pkey PRIMARY KEY (address, event_time, delivery_id, event_id)
);

-- The profiles flagged quarantined: their addresses quarantined by hand.
WITH flagged AS (
    SELECT DISTINCT lower(email) AS address FROM profiles
    WHERE quarantined AND email IS NOT NULL AND email <> ''
),
entries AS (
    INSERT INTO addresses (address, status, update_time, changed_by)
    SELECT address, {AddressStatus.QUARANTINED}, now(), 'migration' FROM flagged
)
INSERT INTO address_events (address, event_time, delivery_id, event_id, signal, changed_by,
                            after)
SELECT address, now(), 0, 'migration-0007', {Signal.QUARANTINE}, 'migration',
       jsonb_build_object('status', {AddressStatus.QUARANTINED}, 'error_count', 0,
                          'update_time', (extract(epoch FROM now()) * 1000000)::bigint,
                          'changed_by', 'migration')
FROM flagged;
ALTER TABLE profiles DROP COLUMN quarantined;
