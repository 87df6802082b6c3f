-- Every query of the delivery service. Each starts with a `-- name: <name>`
-- line and a one-line description; store.py loads them once by name.

-- name: create_operator
-- Creates an operator with a hashed token and roles.
INSERT INTO operators (name, token_hash, roles)
VALUES (%(name)s, %(token_hash)s, %(roles)s);

-- name: find_operator
-- The operator holding a token, by the token's hash.
SELECT name, roles FROM operators WHERE token_hash = %(token_hash)s;

-- name: upsert_profiles
-- Creates or replaces profiles; says for each whether it was created.
INSERT INTO profiles AS p (profile_id, email, quarantined, segments)
SELECT r.profile_id, NULLIF(r.email, ''), r.quarantined, r.segments
FROM jsonb_to_recordset(%(profiles)s::jsonb)
     AS r (profile_id text, email text, quarantined boolean, segments text[])
ON CONFLICT (profile_id) DO UPDATE
    SET email = excluded.email,
        quarantined = excluded.quarantined,
        segments = excluded.segments,
        update_time = now()
RETURNING (xmax = 0) AS created;

-- name: insert_target
-- Creates a target: a segment, or (segment null) a recipient list filled by COPY.
INSERT INTO targets (segment) VALUES (%(segment)s) RETURNING id;

-- name: copy_target_recipients
-- Fills a target's recipient list.
COPY target_recipients (target_id, position, profile_id, email) FROM STDIN;

-- name: insert_delivery
-- Creates a delivery in state DRAFT; nothing if its request_id is taken.
INSERT INTO deliveries (label, subject, body, links, target_id, feedback_mode,
                        validity_period, required_approvals, state, request_id,
                        recurring_delivery_id)
VALUES (%(label)s, %(subject)s, %(body)s, %(links)s, %(target_id)s, %(feedback_mode)s,
        %(validity_period)s, %(required_approvals)s, 'DRAFT', %(request_id)s,
        %(recurring_delivery_id)s)
ON CONFLICT ON CONSTRAINT deliveries_request_id_key DO NOTHING
RETURNING id;

-- name: delivery_id_by_request
-- The delivery a request_id created.
SELECT id FROM deliveries WHERE request_id = %(request_id)s;

-- name: get_delivery
-- One delivery.
SELECT * FROM deliveries WHERE id = %(id)s;

-- name: lock_delivery
-- One delivery, locked until the transaction ends.
SELECT * FROM deliveries WHERE id = %(id)s FOR UPDATE;

-- name: list_deliveries
-- A page of deliveries, newest first, optionally of one state or recurring delivery.
SELECT * FROM deliveries
WHERE id < %(before_id)s
  AND (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(recurring_delivery_id)s::bigint IS NULL
       OR recurring_delivery_id = %(recurring_delivery_id)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: analyse_target
-- Preparation: resolves a target into a temporary table of recipients, each
-- with the reason it is dropped (null when it gets a message).
CREATE TEMPORARY TABLE analysis ON COMMIT DROP AS
WITH candidates AS (
    SELECT r.position, r.profile_id, coalesce(r.email, p.email) AS email,
           (r.profile_id IS NOT NULL AND p.profile_id IS NULL) AS unknown_profile
    FROM target_recipients r
    LEFT JOIN profiles p ON p.profile_id = r.profile_id
    WHERE r.target_id = %(target_id)s
    UNION ALL
    SELECT (row_number() OVER (ORDER BY p.profile_id))::integer - 1, p.profile_id, p.email, false
    FROM targets t
    JOIN profiles p ON t.segment = ANY (p.segments)
    WHERE t.id = %(target_id)s AND t.segment IS NOT NULL
),
quarantine AS (
    SELECT DISTINCT lower(email) AS address FROM profiles WHERE quarantined AND email IS NOT NULL
),
classified AS (
    SELECT c.position, c.profile_id, c.email,
           CASE
               WHEN c.unknown_profile THEN 'UNKNOWN_PROFILE'
               WHEN c.email IS NULL OR c.email = '' THEN 'NO_ADDRESS'
               WHEN c.email !~ %(address_pattern)s THEN 'INVALID_ADDRESS'
               WHEN q.address IS NOT NULL THEN 'QUARANTINED'
               WHEN row_number() OVER (PARTITION BY lower(c.email) ORDER BY c.position) > 1
                   THEN 'DUPLICATE'
           END AS reason
    FROM candidates c
    LEFT JOIN quarantine q ON q.address = lower(c.email)
)
SELECT * FROM classified;

-- name: queue_messages
-- Preparation: one sending log per recipient kept, in target order.
INSERT INTO sending_logs (delivery_id, profile_id, email, status)
SELECT %(delivery_id)s, profile_id, email, %(status)s
FROM analysis WHERE reason IS NULL
ORDER BY position;

-- name: record_dropped
-- Preparation: the recipients dropped, and why.
INSERT INTO dropped_recipients (delivery_id, position, profile_id, email, reason)
SELECT %(delivery_id)s, position, profile_id, email, reason
FROM analysis WHERE reason IS NOT NULL;

-- name: analysis_summary
-- Preparation: how many recipients were targeted, kept, and dropped for each reason.
SELECT coalesce(reason, '') AS reason, count(*) AS n FROM analysis GROUP BY reason;

-- name: first_dropped
-- The first dropped recipients of a delivery.
SELECT profile_id, email, reason FROM dropped_recipients
WHERE delivery_id = %(delivery_id)s ORDER BY position LIMIT %(limit)s;

-- name: set_prepared
-- Records the analysis and moves a delivery to its state after preparation.
UPDATE deliveries
SET state = %(state)s, targeted = %(targeted)s, to_deliver = %(to_deliver)s,
    dropped = %(dropped)s
WHERE id = %(id)s;

-- name: set_approvals
-- Records the approval steps done and the state they lead to.
UPDATE deliveries SET state = %(state)s, approvals = %(approvals)s WHERE id = %(id)s;

-- name: set_confirmed
-- Starts the send: SENDING, and the validity period runs from now.
UPDATE deliveries
SET state = 'SENDING', confirm_time = now(), confirmed_by = %(operator)s,
    validity_end_time = now() + validity_period
WHERE id = %(id)s;

-- name: set_stopped
-- Stops a delivery.
UPDATE deliveries SET state = 'STOPPED', finish_time = now() WHERE id = %(id)s;

-- name: counters
-- A delivery's KPI counters: the sum of its shards.
SELECT coalesce(sum(relayed), 0)::bigint AS relayed,
       coalesce(sum(delivered), 0)::bigint AS delivered,
       coalesce(sum(soft_bounced), 0)::bigint AS soft_bounced,
       coalesce(sum(hard_bounced), 0)::bigint AS hard_bounced,
       coalesce(sum(expired), 0)::bigint AS expired,
       coalesce(sum(opened), 0)::bigint AS opened,
       coalesce(sum(clicked), 0)::bigint AS clicked
FROM delivery_counters WHERE delivery_id = %(delivery_id)s;

-- name: delivery_with_counters
-- A delivery and the sum of its counter shards, in one statement (GetKpis' hot path).
SELECT d.*, c.*
FROM deliveries d
CROSS JOIN LATERAL (
    SELECT coalesce(sum(relayed), 0)::bigint AS relayed,
           coalesce(sum(delivered), 0)::bigint AS delivered,
           coalesce(sum(soft_bounced), 0)::bigint AS soft_bounced,
           coalesce(sum(hard_bounced), 0)::bigint AS hard_bounced,
           coalesce(sum(expired), 0)::bigint AS expired,
           coalesce(sum(opened), 0)::bigint AS opened,
           coalesce(sum(clicked), 0)::bigint AS clicked
    FROM delivery_counters WHERE delivery_id = d.id
) c
WHERE d.id = %(id)s;

-- name: add_counters
-- Adds deltas to one shard of a delivery's counters.
INSERT INTO delivery_counters AS c (delivery_id, shard, relayed, delivered, soft_bounced,
                                    hard_bounced, expired, opened, clicked)
VALUES (%(delivery_id)s, %(shard)s, %(relayed)s, %(delivered)s, %(soft_bounced)s,
        %(hard_bounced)s, %(expired)s, %(opened)s, %(clicked)s)
ON CONFLICT (delivery_id, shard) DO UPDATE
SET relayed = c.relayed + excluded.relayed,
    delivered = c.delivered + excluded.delivered,
    soft_bounced = c.soft_bounced + excluded.soft_bounced,
    hard_bounced = c.hard_bounced + excluded.hard_bounced,
    expired = c.expired + excluded.expired,
    opened = c.opened + excluded.opened,
    clicked = c.clicked + excluded.clicked;

-- name: lock_counters_shared
-- Taken by every change to counters: ComputeStats takes it exclusively to see them still.
SELECT pg_advisory_xact_lock_shared(1, mod(d, 2147483647)::integer)
FROM unnest(%(delivery_ids)s::bigint[]) AS d ORDER BY d;

-- name: lock_counters_exclusive
-- Taken by ComputeStats: no counter of the delivery changes until it commits.
SELECT pg_advisory_xact_lock(1, mod(%(delivery_id)s::bigint, 2147483647)::integer);

-- name: recount
-- Every counter of a delivery, recomputed from its sending and tracking logs.
SELECT count(*) FILTER (WHERE relay_time IS NOT NULL) AS relayed,
       count(*) FILTER (WHERE outcome = 2) AS delivered,
       count(*) FILTER (WHERE outcome = 1) AS soft_bounced,
       count(*) FILTER (WHERE outcome = 4) AS hard_bounced,
       count(*) FILTER (WHERE outcome = 3) AS expired,
       (SELECT count(DISTINCT message_id) FROM tracking_logs
        WHERE delivery_id = %(delivery_id)s) AS opened,
       (SELECT count(DISTINCT message_id) FROM tracking_logs
        WHERE delivery_id = %(delivery_id)s AND kind = 6) AS clicked
FROM sending_logs WHERE delivery_id = %(delivery_id)s;

-- name: clear_counters
-- Drops a delivery's counter shards, before they are replaced by a recount.
DELETE FROM delivery_counters WHERE delivery_id = %(delivery_id)s;

-- name: set_stats
-- Records the open and click counts of a stats computation.
UPDATE deliveries SET stats_time = now(), opened_at_stats = %(opened)s,
                      clicked_at_stats = %(clicked)s
WHERE id = %(id)s;

-- name: refresh_stats
-- The scheduled refresh of Open % and Click %: from the counters, for the
-- deliveries whose figures are older than the stats interval and not final yet.
UPDATE deliveries d
SET stats_time = now(), opened_at_stats = c.opened, clicked_at_stats = c.clicked
FROM (SELECT delivery_id, sum(opened)::bigint AS opened, sum(clicked)::bigint AS clicked
      FROM delivery_counters GROUP BY delivery_id) c
WHERE c.delivery_id = d.id
  AND d.state IN ('SENDING', 'SENT')
  AND (d.stats_time IS NULL OR d.stats_time <= now() - %(interval)s::interval)
RETURNING d.id;

-- name: sending_deliveries
-- The deliveries whose messages are being relayed.
SELECT id FROM deliveries WHERE state = 'SENDING' ORDER BY id;

-- name: try_relay_lock
-- Taken by the one process that relays a delivery, for as long as it does.
SELECT pg_try_advisory_lock(2, mod(%(delivery_id)s::bigint, 2147483647)::integer) AS locked;

-- name: relay_unlock
-- Lets another process relay the delivery.
SELECT pg_advisory_unlock(2, mod(%(delivery_id)s::bigint, 2147483647)::integer);

-- name: queued_messages
-- The next queued messages of a delivery still SENDING, in message order.
SELECT message_id, email FROM sending_logs
WHERE delivery_id = %(delivery_id)s AND message_id > %(after)s
  AND relay_time IS NULL AND outcome = 0
  AND EXISTS (SELECT 1 FROM deliveries WHERE id = %(delivery_id)s AND state = 'SENDING')
ORDER BY message_id
LIMIT %(limit)s;

-- name: mark_relayed
-- Marks relayed a batch the MTA holds: the delivery's queued messages in
-- (after, upto], which are exactly the batch (it was read as the first of them in
-- message order). A message feedback already marked is left alone, so each is
-- counted once.
UPDATE sending_logs
SET relay_time = now(), status = %(status)s, update_time = now()
WHERE delivery_id = %(delivery_id)s AND message_id > %(after)s AND message_id <= %(upto)s
  AND relay_time IS NULL;

-- name: set_sent
-- Every message is relayed: the delivery is SENT.
UPDATE deliveries SET state = 'SENT'
WHERE id = %(id)s AND state = 'SENDING'
  AND NOT EXISTS (SELECT 1 FROM sending_logs
                  WHERE delivery_id = %(id)s AND relay_time IS NULL AND outcome = 0);

-- name: apply_feedback
-- Applies a batch of feedback events in one set-based statement: every event of
-- a known message is logged once (an event id already logged is skipped), each
-- message touched is folded and rewritten once, and the counter deltas go to one
-- shard. The rules are delivery_service.domain.feedback's, for whole sets: a
-- message's outcome (0 none, 1 soft bounced, 2 delivered, 3 expired, 4 hard
-- bounced) only moves up, to the highest one reported; the bounce reason is the
-- lowest one reported with that outcome; the status, failure type and failure
-- reason of each (mode, outcome) come from tables store.py builds from the domain
-- functions; a FINISHED delivery's fates no longer change, though opens and clicks
-- still count. The messages are locked in id order before they are read, so a
-- concurrent batch about the same message waits, then folds into what this one
-- wrote. No two CTEs are joined with each other: each join has a table on one side,
-- so that no plan can turn quadratic in the batch's size.
WITH known AS (
    SELECT e.*
    FROM unnest(%(event_ids)s::text[], %(message_ids)s::bigint[],
                %(delivery_ids)s::bigint[], %(kinds)s::smallint[],
                %(reasons)s::smallint[], %(attempts)s::integer[],
                %(link_indexes)s::integer[], %(event_micros)s::bigint[])
         AS e (event_id, message_id, delivery_id, kind, reason, attempt, link_index,
               event_micros)
    JOIN sending_logs s ON s.message_id = e.message_id AND s.delivery_id = e.delivery_id
),
new_events AS (
    INSERT INTO feedback_events (event_id, message_id, delivery_id, kind, reason, attempt,
                                 link_index, event_time)
    SELECT event_id, message_id, delivery_id, kind, reason, attempt, link_index,
           timestamptz 'epoch' + event_micros * interval '1 microsecond'
    FROM known
    -- In key order: concurrent batches wait on a shared id in the same order.
    ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING message_id, delivery_id, kind, reason
),
per_message AS (
    SELECT n.message_id,
           max(o.outcome) AS outcome,
           (array_agg(n.reason ORDER BY o.outcome DESC, n.reason))[1] AS reason,
           bool_or((%(opens)s::boolean[])[n.kind]) AS opened,
           bool_or((%(clicks)s::boolean[])[n.kind]) AS clicked
    FROM new_events n
    JOIN deliveries d ON d.id = n.delivery_id
    CROSS JOIN LATERAL (SELECT (%(outcome_of_kind)s::smallint[])[n.kind] AS outcome) o
    -- A fate reported after the end of the validity changes nothing; opens and clicks
    -- still count.
    WHERE o.outcome = 0 OR d.state <> 'FINISHED'
    GROUP BY n.message_id
),
current AS (
    -- The messages with what their new events report, locked: a row changed by a
    -- concurrent batch is read as that batch left it.
    SELECT l.message_id, l.delivery_id, l.relay_time IS NOT NULL AS was_relayed,
           l.outcome, l.failure_reason, l.opened, l.clicked,
           p.outcome AS reported, p.reason AS reported_reason,
           p.opened AS reported_open, p.clicked AS reported_click
    FROM per_message p
    JOIN sending_logs l ON l.message_id = p.message_id
    ORDER BY l.message_id
    FOR NO KEY UPDATE OF l
),
folded AS (
    SELECT c.message_id, c.delivery_id, c.was_relayed,
           (d.feedback_mode = 'EFS')::integer + 1 AS mode,
           c.outcome AS old_outcome, greatest(c.outcome, c.reported) AS outcome,
           CASE WHEN c.reported > c.outcome THEN c.reported_reason
                WHEN c.reported = c.outcome THEN least(c.failure_reason, c.reported_reason)
                ELSE c.failure_reason END AS bounce_reason,
           c.failure_reason AS old_failure_reason,
           c.opened AS old_opened, c.opened OR c.reported_open AS opened,
           c.clicked AS old_clicked, c.clicked OR c.reported_click AS clicked
    FROM current c
    JOIN deliveries d ON d.id = c.delivery_id
),
changes AS (
    SELECT r.* FROM (
        SELECT f.*,
               (%(statuses)s::smallint[])[f.mode][f.outcome + 1] AS status,
               (%(failure_types)s::smallint[])[f.mode][f.outcome + 1] AS failure_type,
               coalesce((%(failure_reasons)s::smallint[])[f.mode][f.outcome + 1],
                        f.bounce_reason) AS failure_reason
        FROM folded f
    ) r
    WHERE NOT r.was_relayed OR r.outcome <> r.old_outcome
       OR r.failure_reason <> r.old_failure_reason
       OR r.opened <> r.old_opened OR r.clicked <> r.old_clicked
),
updated AS (
    UPDATE sending_logs s
    SET status = c.status, outcome = c.outcome, failure_type = c.failure_type,
        failure_reason = c.failure_reason, opened = c.opened, clicked = c.clicked,
        relay_time = coalesce(s.relay_time, now()), update_time = now()
    FROM changes c
    WHERE s.message_id = c.message_id
),
counted AS (
    INSERT INTO delivery_counters AS k (delivery_id, shard, relayed, delivered, soft_bounced,
                                        hard_bounced, expired, opened, clicked)
    SELECT delivery_id, %(shard)s,
           count(*) FILTER (WHERE NOT was_relayed),
           count(*) FILTER (WHERE outcome = 2) - count(*) FILTER (WHERE old_outcome = 2),
           count(*) FILTER (WHERE outcome = 1) - count(*) FILTER (WHERE old_outcome = 1),
           count(*) FILTER (WHERE outcome = 4) - count(*) FILTER (WHERE old_outcome = 4),
           count(*) FILTER (WHERE outcome = 3) - count(*) FILTER (WHERE old_outcome = 3),
           count(*) FILTER (WHERE opened AND NOT old_opened),
           count(*) FILTER (WHERE clicked AND NOT old_clicked)
    FROM changes
    GROUP BY delivery_id
    ORDER BY delivery_id
    ON CONFLICT (delivery_id, shard) DO UPDATE
    SET relayed = k.relayed + excluded.relayed,
        delivered = k.delivered + excluded.delivered,
        soft_bounced = k.soft_bounced + excluded.soft_bounced,
        hard_bounced = k.hard_bounced + excluded.hard_bounced,
        expired = k.expired + excluded.expired,
        opened = k.opened + excluded.opened,
        clicked = k.clicked + excluded.clicked
)
SELECT (SELECT count(*) FROM known) AS known, (SELECT count(*) FROM new_events) AS applied;

-- name: update_messages
-- Writes the new state of messages that feedback changed.
UPDATE sending_logs s
SET status = v.status, outcome = v.outcome, failure_type = v.failure_type,
    failure_reason = v.failure_reason, opened = v.opened, clicked = v.clicked,
    relay_time = coalesce(s.relay_time, now()), update_time = now()
FROM unnest(%(message_ids)s::bigint[], %(statuses)s::smallint[], %(outcomes)s::smallint[],
            %(failure_types)s::smallint[], %(failure_reasons)s::smallint[],
            %(opened)s::boolean[], %(clicked)s::boolean[])
     AS v (message_id, status, outcome, failure_type, failure_reason, opened, clicked)
WHERE s.message_id = v.message_id;

-- name: expiring_deliveries
-- Deliveries whose validity period (and the grace for late feedback) is over.
SELECT id FROM deliveries
WHERE state IN ('SENDING', 'SENT')
  AND validity_end_time + %(grace)s::interval <= now()
ORDER BY id;

-- name: unsettled_messages
-- Messages whose fate the end of the validity can still change, in message order.
SELECT s.message_id, s.delivery_id, s.relay_time IS NOT NULL AS relayed, s.outcome,
       s.failure_reason, s.opened, s.clicked, d.feedback_mode, d.state
FROM sending_logs s JOIN deliveries d ON d.id = s.delivery_id
WHERE s.delivery_id = %(delivery_id)s AND s.message_id > %(after)s
  AND (s.outcome = 1 OR s.relay_time IS NULL OR (d.feedback_mode = 'EFS' AND s.outcome = 0))
ORDER BY s.message_id
LIMIT %(limit)s
FOR UPDATE OF s;

-- name: set_finished
-- The validity period is over: the figures are final.
UPDATE deliveries SET state = 'FINISHED', finish_time = now() WHERE id = %(id)s;

-- name: list_sending_logs
-- A page of a delivery's sending logs, in message order.
SELECT s.* FROM sending_logs s
WHERE s.delivery_id = %(delivery_id)s AND s.message_id > %(after)s
ORDER BY s.message_id
LIMIT %(limit)s;

-- name: list_sending_logs_by_status
-- A page of a delivery's sending logs with one status, in message order.
SELECT s.* FROM sending_logs s
WHERE s.delivery_id = %(delivery_id)s AND s.status = %(status)s AND s.message_id > %(after)s
ORDER BY s.message_id
LIMIT %(limit)s;

-- name: history_by_profile
-- A page of the messages sent to a profile, newest first.
SELECT s.* FROM sending_logs s
WHERE s.profile_id = %(profile_id)s AND s.message_id < %(before)s AND s.status <> 1
ORDER BY s.message_id DESC
LIMIT %(limit)s;

-- name: history_by_email
-- A page of the messages sent to an address, newest first.
SELECT s.* FROM sending_logs s
WHERE s.email = %(email)s AND s.message_id < %(before)s AND s.status <> 1
ORDER BY s.message_id DESC
LIMIT %(limit)s;

-- name: profile_exists
-- Whether a profile exists.
SELECT 1 FROM profiles WHERE profile_id = %(profile_id)s;

-- name: insert_recurring
-- Creates a recurring delivery; nothing if its request_id is taken.
INSERT INTO recurring_deliveries (label, subject, body, links, target_id, feedback_mode,
                                  validity_period, required_approvals, occurrence_interval,
                                  confirm_before_send, next_occurrence_time, request_id)
VALUES (%(label)s, %(subject)s, %(body)s, %(links)s, %(target_id)s, %(feedback_mode)s,
        %(validity_period)s, %(required_approvals)s, %(occurrence_interval)s,
        %(confirm_before_send)s, coalesce(%(next_occurrence_time)s, now()), %(request_id)s)
ON CONFLICT ON CONSTRAINT recurring_deliveries_request_id_key DO NOTHING
RETURNING id;

-- name: recurring_id_by_request
-- The recurring delivery a request_id created.
SELECT id FROM recurring_deliveries WHERE request_id = %(request_id)s;

-- name: get_recurring
-- One recurring delivery.
SELECT * FROM recurring_deliveries WHERE id = %(id)s;

-- name: due_recurring
-- Recurring deliveries whose next occurrence is due, locked; other processes skip them.
SELECT * FROM recurring_deliveries
WHERE next_occurrence_time <= now()
ORDER BY next_occurrence_time
LIMIT 10
FOR UPDATE SKIP LOCKED;

-- name: insert_occurrence
-- Creates the next occurrence of a recurring delivery, in state DRAFT.
INSERT INTO deliveries (label, subject, body, links, target_id, feedback_mode,
                        validity_period, required_approvals, state, recurring_delivery_id)
SELECT label || ' #' || (occurrences + 1), subject, body, links, target_id, feedback_mode,
       validity_period, required_approvals, 'DRAFT', id
FROM recurring_deliveries WHERE id = %(id)s
RETURNING id;

-- name: advance_recurring
-- Schedules the next occurrence: the first interval boundary after now, so
-- that missed occurrences are skipped rather than sent in a burst.
UPDATE recurring_deliveries
SET occurrences = occurrences + 1,
    next_occurrence_time = next_occurrence_time + occurrence_interval * (1 + floor(
        extract(epoch FROM now() - next_occurrence_time)
        / extract(epoch FROM occurrence_interval)))
WHERE id = %(id)s;
