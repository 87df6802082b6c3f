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
    quarantined boolean NOT NULL DEFAULT false,
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
    created_by            text
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
    delivery_id    bigint NOT NULL REFERENCES deliveries ON DELETE CASCADE,
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
    CONSTRAINT feedback_events_pkey PRIMARY KEY (delivery_id, event_id)
);
CREATE INDEX feedback_events_delivery_idx ON feedback_events (delivery_id, kind);

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
    PRIMARY KEY (delivery_id, shard)
);
