-- The spool's schema and every query it runs. Each starts with a `-- name: <name>`
-- line and a one-line description; spool.py loads them once by name.
-- Times are seconds since the epoch (REAL); kinds and reasons are mta.v1 enum values.

-- name: schema
-- The tables, created on first use.
CREATE TABLE IF NOT EXISTS clients (
    -- The clients (Hello.client_id) that relayed messages or opened streams, numbered:
    -- the feedback about a message is for the client that relayed it, its owner.
    owner INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS held (
    -- Every message accepted, kept for deduplication after its timeline is over, until
    -- the retention after its expiry (forget_held).
    message_id INTEGER PRIMARY KEY,
    -- The message's expiry, as relayed; NULL for messages held before schema version 5,
    -- whose expiry was not kept: those are kept for good.
    expire_at REAL
);
CREATE INDEX IF NOT EXISTS held_by_expiry ON held (expire_at);
CREATE TABLE IF NOT EXISTS schedule (
    -- A message's next step, while its timeline goes on; at most one per message.
    due REAL NOT NULL,
    message_id INTEGER NOT NULL,
    delivery_id INTEGER NOT NULL,
    owner INTEGER NOT NULL,
    expire_at REAL NOT NULL,
    hard_reason INTEGER NOT NULL,
    soft_bounces INTEGER NOT NULL,
    opened INTEGER NOT NULL,
    click_link INTEGER NOT NULL,
    delay_ms INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    -- The fate's soft reason, and the event after its delivery report (0: none) and when.
    soft_reason INTEGER NOT NULL DEFAULT 2,
    after_kind INTEGER NOT NULL DEFAULT 0,
    after_ms INTEGER NOT NULL DEFAULT 0,
    -- Keyed by due time: firing reads and deletes a prefix of the key.
    PRIMARY KEY (due, message_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    -- Events not acknowledged yet, numbered in the order they happened, a run of up to
    -- a feedback batch's worth per row, packed (spool.py says how): the outbox is
    -- written and read at tens of thousands of events a second, a row each is too slow.
    -- A row is the number of its first event: rows sort in event order. A row's events
    -- are all for one owner, whose streams alone take them.
    first_event INTEGER PRIMARY KEY,
    owner INTEGER NOT NULL,
    count INTEGER NOT NULL,
    events BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_owner ON outbox (owner, first_event);
CREATE TABLE IF NOT EXISTS outcomes (
    -- GetOutcomes, per delivery and client; changed in the transaction of what it counts.
    owner INTEGER NOT NULL,
    delivery_id INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    hard_bounced INTEGER NOT NULL,
    soft_bounced INTEGER NOT NULL,
    expired INTEGER NOT NULL,
    opened INTEGER NOT NULL,
    clicked INTEGER NOT NULL,
    in_flight INTEGER NOT NULL,
    unacknowledged_events INTEGER NOT NULL,
    complained INTEGER NOT NULL DEFAULT 0,
    late_bounced INTEGER NOT NULL DEFAULT 0,
    ignored INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, delivery_id)
);
CREATE TABLE IF NOT EXISTS addresses (
    -- The address of each message whose feedback carries SMTP replies (bounces, ignored
    -- auto-replies), which name it; kept, as held is, after the message's timeline is
    -- over, and forgotten with it.
    message_id INTEGER PRIMARY KEY,
    email TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS scenarios (
    -- The last SetScenario of each scope, as JSON; the scope is '' (global),
    -- 'delivery:<id>' or 'client:<client_id>'.
    scope TEXT PRIMARY KEY,
    body TEXT NOT NULL
);

-- name: migrate_3_to_4
-- The columns a spool of schema version 3 lacks (schema then adds the new tables).
ALTER TABLE schedule ADD COLUMN soft_reason INTEGER NOT NULL DEFAULT 2;
ALTER TABLE schedule ADD COLUMN after_kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE schedule ADD COLUMN after_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outcomes ADD COLUMN complained INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outcomes ADD COLUMN late_bounced INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outcomes ADD COLUMN ignored INTEGER NOT NULL DEFAULT 0;

-- name: migrate_4_to_5
-- The column a spool of schema version 4 lacks (schema then adds its index): the expiry of
-- each message held. Unknown for those held before, but for those with a step left.
ALTER TABLE held ADD COLUMN expire_at REAL;
UPDATE held SET expire_at = schedule.expire_at
FROM schedule WHERE schedule.message_id = held.message_id;

-- name: all_clients
-- Every client known, with its number.
SELECT owner, client_id FROM clients;

-- name: add_client
-- Numbers a new client.
INSERT INTO clients (client_id) VALUES (?) RETURNING owner;

-- name: hold_new
-- Holds the messages of a JSON array of ids, which expire at one time; returns those not
-- held before.
INSERT OR IGNORE INTO held (message_id, expire_at)
SELECT value, ?2 FROM json_each(?1)
RETURNING message_id;

-- name: forget_held
-- Forgets up to so many held messages that expired before a time and have no step left,
-- the earliest expired first; returns their ids. (A message's steps carry its expiry: only
-- the steps of messages expired before the time are read.)
DELETE FROM held WHERE message_id IN (
    SELECT message_id FROM held
    WHERE expire_at < ?1
      AND message_id NOT IN (SELECT message_id FROM schedule WHERE expire_at < ?1)
    ORDER BY expire_at
    LIMIT ?2
)
RETURNING message_id;

-- name: forget_addresses
-- Forgets the addresses kept of a JSON array of message ids.
DELETE FROM addresses WHERE message_id IN (SELECT value FROM json_each(?));

-- name: insert_step
-- Schedules a message's next step.
INSERT INTO schedule (due, message_id, delivery_id, owner, expire_at, hard_reason,
                      soft_bounces, opened, click_link, delay_ms, kind, attempt,
                      soft_reason, after_kind, after_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_address
-- Keeps the address of a message whose feedback names it.
INSERT OR IGNORE INTO addresses (message_id, email) VALUES (?, ?);

-- name: addresses
-- The addresses kept of a JSON array of message ids.
SELECT message_id, email FROM addresses
WHERE message_id IN (SELECT value FROM json_each(?));

-- name: due_steps
-- The earliest steps due by a time, in key order, at most so many.
SELECT due, message_id, delivery_id, owner, expire_at, hard_reason, soft_bounces,
       opened, click_link, delay_ms, kind, attempt, soft_reason, after_kind, after_ms
FROM schedule
WHERE due <= ?
ORDER BY due, message_id
LIMIT ?;

-- name: delete_steps_through
-- Deletes the steps up to a key: those due_steps just returned.
DELETE FROM schedule WHERE (due, message_id) <= (?, ?);

-- name: next_due
-- When the earliest step is due; NULL when nothing is scheduled.
SELECT min(due) FROM schedule;

-- name: insert_run
-- Puts a run of events for one owner in the outbox.
INSERT INTO outbox (first_event, owner, count, events) VALUES (?, ?, ?, ?);

-- name: runs_after
-- An owner's first run in the outbox after a run, in event order.
SELECT first_event, count, events FROM outbox
WHERE owner = ? AND first_event > ?
ORDER BY first_event LIMIT 1;

-- name: run
-- One run of the outbox.
SELECT first_event, count, events FROM outbox WHERE first_event = ?;

-- name: cut_run
-- Keeps the first events of a run (the rest goes to a run of its own).
UPDATE outbox SET count = ?, events = ? WHERE first_event = ?;

-- name: delete_run
-- Forgets an acknowledged run.
DELETE FROM outbox WHERE first_event = ?;

-- name: outbox_size
-- The number the next event gets.
SELECT coalesce(max(first_event + count), 1) FROM outbox;

-- name: outbox_by_owner
-- How many events the outbox holds for each owner.
SELECT owner, sum(count) FROM outbox GROUP BY owner;

-- name: add_outcomes
-- Adds to the record of a delivery and client, creating it at the first count.
INSERT INTO outcomes (owner, delivery_id, accepted, duplicates, delivered, hard_bounced,
                      soft_bounced, expired, opened, clicked, in_flight, unacknowledged_events,
                      complained, late_bounced, ignored)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (owner, delivery_id) DO UPDATE SET
    accepted = accepted + excluded.accepted,
    duplicates = duplicates + excluded.duplicates,
    delivered = delivered + excluded.delivered,
    hard_bounced = hard_bounced + excluded.hard_bounced,
    soft_bounced = soft_bounced + excluded.soft_bounced,
    expired = expired + excluded.expired,
    opened = opened + excluded.opened,
    clicked = clicked + excluded.clicked,
    in_flight = in_flight + excluded.in_flight,
    unacknowledged_events = unacknowledged_events + excluded.unacknowledged_events,
    complained = complained + excluded.complained,
    late_bounced = late_bounced + excluded.late_bounced,
    ignored = ignored + excluded.ignored;

-- name: all_outcomes
-- Every record, to serve GetOutcomes from memory.
SELECT owner, delivery_id, accepted, duplicates, delivered, hard_bounced, soft_bounced,
       expired, opened, clicked, in_flight, unacknowledged_events, complained, late_bounced,
       ignored
FROM outcomes;

-- name: save_scenario
-- Keeps the last SetScenario of a scope.
INSERT INTO scenarios (scope, body) VALUES (?, ?)
ON CONFLICT (scope) DO UPDATE SET body = excluded.body;

-- name: delete_scenario
-- Forgets a scope's scenario.
DELETE FROM scenarios WHERE scope = ?;

-- name: all_scenarios
-- Every scope's last SetScenario.
SELECT scope, body FROM scenarios;
