-- The schema as the migrations leave it today, in one file to read: operators,
-- profiles, targets, deliveries, sending logs, feedback events (bounces,
-- deliveries and the tracking logs of opens and clicks), and the sharded KPI
-- counters. Not applied by anything: sql/migrations/ is what changes a database,
-- and tests/integration/test_schema.py checks that the two agree. A migration
-- that changes the schema changes this file in the same commit.

CREATE TABLE operators (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CONSTRAINT operators_name_key UNIQUE,
    -- sha256 of the token: tokens are 256-bit random, so a slow hash buys nothing.
    token_hash  bytea NOT NULL CONSTRAINT operators_token_hash_key UNIQUE,
    roles       text[] NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    -- When the token stops working (never if null), and when it was revoked.
    expire_time timestamptz,
    revoke_time timestamptz
);

-- The audit trail: every state-changing call, appended, never updated.
CREATE TABLE audit_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time       timestamptz NOT NULL,
    operator   text NOT NULL,
    method     text NOT NULL,
    target     text NOT NULL,
    code       text NOT NULL,
    request_id text NOT NULL,
    peer       text NOT NULL
);
CREATE INDEX audit_events_operator_idx ON audit_events (operator, id);
-- Append-only in the database itself (migration 0006).
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

CREATE TABLE profiles (
    profile_id  text PRIMARY KEY,
    email       text,
    segments    text[] NOT NULL DEFAULT '{}',
    update_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX profiles_segments_idx ON profiles USING gin (segments);
CREATE INDEX profiles_email_idx ON profiles (lower(email));

-- Who a delivery targets: a segment, or a list of recipients kept in order.
-- Occurrences of a recurring delivery share their template's target.
CREATE TABLE targets (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    segment text
);

CREATE TABLE target_recipients (
    target_id  bigint NOT NULL REFERENCES targets ON DELETE CASCADE,
    position   integer NOT NULL,
    profile_id text,
    email      text,
    PRIMARY KEY (target_id, position),
    CHECK ((profile_id IS NULL) <> (email IS NULL))
);

CREATE TABLE recurring_deliveries (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    label                text NOT NULL,
    subject              text NOT NULL,
    body                 text NOT NULL,
    links                text[] NOT NULL,
    target_id            bigint NOT NULL REFERENCES targets,
    feedback_mode        text NOT NULL CHECK (feedback_mode IN ('WITHOUT_EFS', 'EFS')),
    validity_period      interval NOT NULL,
    required_approvals   text[] NOT NULL,
    occurrence_interval  interval NOT NULL,
    confirm_before_send  boolean NOT NULL,
    next_occurrence_time timestamptz NOT NULL,
    occurrences          integer NOT NULL DEFAULT 0,
    request_id           text,
    create_time          timestamptz NOT NULL DEFAULT now(),
    -- Who created it: occurrences that send unattended run on this operator's authority.
    created_by           text,
    -- A digest of the creating request: the same request_id with another request is
    -- refused (ALREADY_EXISTS).
    request_digest       bytea,
    state                text NOT NULL DEFAULT {RecurringState.ACTIVE}
        CHECK (state IN ({RecurringState.ACTIVE}, {RecurringState.PAUSED},
                         {RecurringState.CANCELLED})),
    -- Idempotency keys are scoped to the operator who sends them.
    CONSTRAINT recurring_deliveries_request_id_key UNIQUE (created_by, request_id)
);

CREATE TABLE deliveries (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    label                 text NOT NULL,
    subject               text NOT NULL,
    body                  text NOT NULL,
    links                 text[] NOT NULL,
    target_id             bigint NOT NULL REFERENCES targets,
    feedback_mode         text NOT NULL CHECK (feedback_mode IN ('WITHOUT_EFS', 'EFS')),
    validity_period       interval NOT NULL,
    required_approvals    text[] NOT NULL,
    approvals             text[] NOT NULL DEFAULT '{}',
    state                 text NOT NULL CHECK (state IN
        ('DRAFT', 'PREPARED', 'APPROVED', 'SENDING', 'SENT', 'FINISHED', 'STOPPED')),
    targeted              bigint NOT NULL DEFAULT 0,
    to_deliver            bigint NOT NULL DEFAULT 0,
    dropped               bigint NOT NULL DEFAULT 0,
    recurring_delivery_id bigint REFERENCES recurring_deliveries,
    create_time           timestamptz NOT NULL DEFAULT now(),
    confirm_time          timestamptz,
    confirmed_by          text,
    validity_end_time     timestamptz,
    finish_time           timestamptz,
    -- Open % and Click % are refreshed on a schedule: the counts as of stats_time.
    stats_time            timestamptz,
    opened_at_stats       bigint NOT NULL DEFAULT 0,
    clicked_at_stats      bigint NOT NULL DEFAULT 0,
    created_by            text,
    -- When the retention pruned its feedback events (migration 0015): feedback about it
    -- is refused from then on.
    events_pruned_time    timestamptz,
    -- When the retention pruned its sending logs and dropped recipients (migration
    -- 0016): its figures are final, and its logs are no longer listed.
    logs_pruned_time      timestamptz
);
CREATE INDEX deliveries_state_idx ON deliveries (state) WHERE state IN ('SENDING', 'SENT');
CREATE INDEX deliveries_recurring_idx ON deliveries (recurring_delivery_id, id)
    WHERE recurring_delivery_id IS NOT NULL;

CREATE TABLE dropped_recipients (
    delivery_id bigint NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    position    integer NOT NULL,
    profile_id  text,
    email       text,
    reason      text NOT NULL,
    PRIMARY KEY (delivery_id, position)
);

-- The request ids of deliveries (a key unique across deliveries: a table of its own).
-- Scoped to the operator who sent them, with a digest of the request they answered.
CREATE TABLE delivery_requests (
    request_id     text NOT NULL,
    delivery_id    bigint NOT NULL,
    operator       text NOT NULL,
    request_digest bytea,
    CONSTRAINT delivery_requests_pkey PRIMARY KEY (request_id, operator)
);

-- One row per message. message_id is the MTA's idempotency key.
-- status, failure_type and failure_reason follow delivery_service.domain.feedback;
-- outcome is the strongest fate reported so far (0 none, 1 soft bounced,
-- 2 delivered, 3 expired, 4 hard bounced): a fate only ever moves up, which
-- makes applying feedback idempotent and independent of its order.
CREATE TABLE sending_logs (
    message_id     bigint GENERATED ALWAYS AS IDENTITY,
    -- Its delivery's id; no foreign key: preparation writes them with the delivery
    -- locked, and the key's check per message cost a quarter of it (migration 0017).
    delivery_id    bigint NOT NULL,
    profile_id     text,
    email          text NOT NULL,
    status         smallint NOT NULL,
    outcome        smallint NOT NULL DEFAULT {Outcome.NONE},
    failure_type   smallint NOT NULL DEFAULT 0,
    failure_reason smallint NOT NULL DEFAULT 0,
    opened         boolean NOT NULL DEFAULT false,
    clicked        boolean NOT NULL DEFAULT false,
    relay_time     timestamptz,
    update_time    timestamptz NOT NULL DEFAULT now(),
    complained     boolean NOT NULL DEFAULT false,
    -- The receiving server's reply to the bounce that decided the failure (migration 0007).
    smtp_code      integer NOT NULL DEFAULT 0,
    smtp_status    text NOT NULL DEFAULT '',
    smtp_text      text NOT NULL DEFAULT '',
    -- The message's rank among its delivery's recipient domains (1 to 10, the largest;
    -- 0, the others): the failure breakdown's key (migration 0008).
    domain_rank    smallint NOT NULL DEFAULT 0,
    -- Feedback events logged for the message, refused beyond a bound (migration 0010).
    events         integer NOT NULL DEFAULT 0,
    CONSTRAINT sending_logs_pkey PRIMARY KEY (delivery_id, message_id)
)
-- Half of each page free: relaying and feedback rewrite rows in place (HOT), see
-- migration 0002.
WITH (fillfactor = 50);
CREATE INDEX sending_logs_profile_idx ON sending_logs (profile_id, message_id)
    WHERE profile_id IS NOT NULL;
CREATE INDEX sending_logs_email_idx ON sending_logs (email, message_id);

-- Every feedback event applied, once: the event id is the MTA's stable id, so a
-- duplicate or a resend is recognised and skipped.
CREATE TABLE feedback_events (
    event_id    text NOT NULL,
    message_id  bigint NOT NULL,
    delivery_id bigint NOT NULL,
    kind        smallint NOT NULL,
    reason      smallint NOT NULL DEFAULT 0,
    attempt     integer NOT NULL DEFAULT 0,
    link_index  integer NOT NULL DEFAULT 0,
    event_time  timestamptz NOT NULL,
    apply_time  timestamptz NOT NULL DEFAULT now(),
    smtp_code   integer NOT NULL DEFAULT 0,
    smtp_status text NOT NULL DEFAULT '',
    smtp_text   text NOT NULL DEFAULT '',
    -- The transaction that logged it: its row in the event feed is that transaction's.
    xid         xid8 DEFAULT pg_current_xact_id(),
    CONSTRAINT feedback_events_pkey PRIMARY KEY (delivery_id, event_id)
);
-- A message's events (its timeline), and the recounts' reads of opens, clicks and
-- complaints by message.
CREATE INDEX feedback_events_message_idx ON feedback_events (delivery_id, message_id, kind);

-- The tracking logs: opens and clicks.
CREATE VIEW tracking_logs AS
    SELECT event_id, message_id, delivery_id, kind, link_index, event_time
    FROM feedback_events
    WHERE kind IN ({EventKind.OPENED}, {EventKind.CLICKED});

-- KPI counters, sharded so that concurrent feedback batches do not queue on
-- one hot row; a delivery's figures are the sum of its few shards.
CREATE TABLE delivery_counters (
    delivery_id  bigint NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    shard        smallint NOT NULL,
    relayed      bigint NOT NULL DEFAULT 0,
    delivered    bigint NOT NULL DEFAULT 0,
    soft_bounced bigint NOT NULL DEFAULT 0,
    hard_bounced bigint NOT NULL DEFAULT 0,
    expired      bigint NOT NULL DEFAULT 0,
    opened       bigint NOT NULL DEFAULT 0,
    clicked      bigint NOT NULL DEFAULT 0,
    complained   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, shard)
);

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

CREATE TABLE delivery_domains (
    delivery_id bigint NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    domain_rank smallint NOT NULL,
    domain      text NOT NULL,
    PRIMARY KEY (delivery_id, domain_rank)
);

CREATE TABLE delivery_domain_counters (
    delivery_id  bigint NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    domain_rank  smallint NOT NULL,
    shard        smallint NOT NULL,
    to_deliver   bigint NOT NULL DEFAULT 0,
    relayed      bigint NOT NULL DEFAULT 0,
    delivered    bigint NOT NULL DEFAULT 0,
    soft_bounced bigint NOT NULL DEFAULT 0,
    hard_bounced bigint NOT NULL DEFAULT 0,
    expired      bigint NOT NULL DEFAULT 0,
    opened       bigint NOT NULL DEFAULT 0,
    clicked      bigint NOT NULL DEFAULT 0,
    complained   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, domain_rank, shard)
);

-- Messages whose sending log is FAILED, by failure type and reason.
CREATE TABLE delivery_failure_counters (
    delivery_id    bigint NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    failure_type   smallint NOT NULL,
    failure_reason smallint NOT NULL,
    shard          smallint NOT NULL,
    failed         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, failure_type, failure_reason, shard)
);

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
    -- The first and last of message_ids (sorted), to find a message's rows.
    first_message_id bigint,
    last_message_id  bigint,
    -- How many items it holds (messages, then events): pages slice rows by it.
    items       integer GENERATED ALWAYS AS (cardinality(message_ids)
                                             + cardinality(event_ids)) STORED,
    PRIMARY KEY (delivery_id, xid, seq)
);
-- Out of line, not compressed: written once, read page by page by every consumer.
ALTER TABLE delivery_feed ALTER COLUMN message_ids SET STORAGE EXTERNAL,
                          ALTER COLUMN event_ids SET STORAGE EXTERNAL;
-- Every delivery's feed, in order.
CREATE INDEX delivery_feed_order_idx ON delivery_feed (xid, seq);

-- The event feed's retention (docs/events.md): rows are pruned in feed order, and the
-- last one pruned is remembered, so that a cursor before it is told it is out of range
-- (it would miss what was pruned) instead of silently skipping.
CREATE TABLE delivery_feed_horizon (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    xid      xid8 NOT NULL,
    seq      bigint NOT NULL,
    items    integer NOT NULL
);
