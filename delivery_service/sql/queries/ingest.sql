-- Feedback ingest: a delivery's events folded into its sending logs and counters.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: lock_feedback_messages
-- Locks a delivery's messages that a batch of feedback is about, in id order, before
-- the batch is applied in the same transaction: a concurrent batch about the same
-- message waits, then reads what this one wrote. A statement of its own: Citus takes
-- no row lock inside a CTE (docs/scaling.md).
SELECT message_id FROM sending_logs
WHERE delivery_id = %(delivery_id)s AND message_id = ANY (%(message_ids)s::bigint[])
ORDER BY message_id
FOR NO KEY UPDATE;

-- name: apply_feedback
-- Applies a batch of one delivery's feedback events in one set-based statement, its
-- messages locked first (lock_feedback_messages): every event of a known message is
-- logged once (an event id already logged is skipped), each
-- message touched is folded and rewritten once, and the counter deltas go to one
-- shard. The rules are delivery_service.domain.feedback's, for whole sets: a
-- message's outcome (0 none, 1 soft bounced, 2 delivered, 3 expired, 4 hard
-- bounced) only moves up, to the highest one reported; the bounce reason is the
-- lowest one reported with that outcome; the status, failure type and failure
-- reason of each (mode, outcome) come from tables store.py builds from the domain
-- functions; a FINISHED delivery's fates no longer change, though opens and clicks
-- still count. An event is believed only if it fits the relay record (`refusal`): its
-- delivery is SENDING, SENT or FINISHED, its message was relayed, its time is within
-- [relay time - 5 min, now + 5 min], a click names a link the content has, and an open
-- or a click is about a delivered message (or one this batch reports delivered). A
-- refused event is neither logged nor applied; refusals that time may mend (not
-- relayed yet, not delivered yet) are `deferred` unless `final`. Every reference to a per-delivery table is filtered by the delivery
-- (one shard on Citus). No two CTEs are joined with each other: each join has a table
-- on one side, so that no plan can turn quadratic in the batch's size.
WITH known AS (
    SELECT e.*,
           CASE
               WHEN d.state NOT IN ({State.SENDING}, {State.SENT}, {State.FINISHED})
                   THEN 'delivery_state'
               WHEN s.relay_time IS NULL THEN 'not_relayed'
               WHEN e.event_micros < %(relay_margin)s
                                     + (extract(epoch FROM s.relay_time) * 1000000)::bigint
                 OR e.event_micros > %(now_micros)s + %(future_margin)s
                   THEN 'event_time'
               WHEN (%(clicks)s::boolean[])[e.kind]
                    AND NOT e.link_index BETWEEN 0 AND cardinality(d.links) - 1
                   THEN 'link_index'
               WHEN (%(opens)s::boolean[])[e.kind] AND NOT e.delivered_in_batch
                    AND NOT (%(engageable)s::boolean[])
                            [(d.feedback_mode = {FeedbackMode.EFS})::integer + 1][s.outcome + 1]
                   THEN 'not_delivered'
           END AS refusal
    FROM unnest(%(event_ids)s::text[], %(message_ids)s::bigint[], %(kinds)s::smallint[],
                %(reasons)s::smallint[], %(attempts)s::integer[],
                %(link_indexes)s::integer[], %(event_micros)s::bigint[],
                %(delivered_in_batch)s::boolean[])
         AS e (event_id, message_id, kind, reason, attempt, link_index, event_micros,
               delivered_in_batch)
    JOIN sending_logs s ON s.delivery_id = %(delivery_id)s AND s.message_id = e.message_id
    JOIN deliveries d ON d.id = %(delivery_id)s
),
new_events AS (
    INSERT INTO feedback_events (event_id, message_id, delivery_id, kind, reason, attempt,
                                 link_index, event_time)
    SELECT event_id, message_id, %(delivery_id)s, kind, reason, attempt, link_index,
           timestamptz 'epoch' + event_micros * interval '1 microsecond'
    FROM known
    WHERE refusal IS NULL
    -- In key order: concurrent batches wait on a shared id in the same order.
    ORDER BY event_id
    ON CONFLICT (delivery_id, event_id) DO NOTHING
    RETURNING message_id, kind, reason
),
per_message AS (
    SELECT n.message_id,
           max(o.outcome) AS outcome,
           (array_agg(n.reason ORDER BY o.outcome DESC, n.reason))[1] AS reason,
           bool_or((%(opens)s::boolean[])[n.kind]) AS opened,
           bool_or((%(clicks)s::boolean[])[n.kind]) AS clicked
    FROM new_events n
    JOIN deliveries d ON d.id = %(delivery_id)s
    CROSS JOIN LATERAL (SELECT (%(outcome_of_kind)s::smallint[])[n.kind] AS outcome) o
    -- A fate reported after the end of the validity changes nothing; opens and clicks
    -- still count.
    WHERE o.outcome = {Outcome.NONE} OR d.state <> {State.FINISHED}
    GROUP BY n.message_id
),
current AS (
    -- The messages with what their new events report, as the batches before this one
    -- left them (they are locked: lock_feedback_messages).
    SELECT l.message_id, l.relay_time IS NOT NULL AS was_relayed,
           l.outcome, l.failure_reason, l.opened, l.clicked,
           p.outcome AS reported, p.reason AS reported_reason,
           p.opened AS reported_open, p.clicked AS reported_click
    FROM per_message p
    JOIN sending_logs l ON l.delivery_id = %(delivery_id)s AND l.message_id = p.message_id
),
folded AS (
    SELECT c.message_id, c.was_relayed,
           -- The rule tables' first index: 1 without EFS, 2 with it.
           (d.feedback_mode = {FeedbackMode.EFS})::integer + 1 AS mode,
           c.outcome AS old_outcome, greatest(c.outcome, c.reported) AS outcome,
           CASE WHEN c.reported > c.outcome THEN c.reported_reason
                WHEN c.reported = c.outcome THEN least(c.failure_reason, c.reported_reason)
                ELSE c.failure_reason END AS bounce_reason,
           c.failure_reason AS old_failure_reason,
           c.opened AS old_opened, c.opened OR c.reported_open AS opened,
           c.clicked AS old_clicked, c.clicked OR c.reported_click AS clicked
    FROM current c
    JOIN deliveries d ON d.id = %(delivery_id)s
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
        relay_time = coalesce(s.relay_time, %(now)s), update_time = %(now)s
    FROM changes c
    WHERE s.delivery_id = %(delivery_id)s AND s.message_id = c.message_id
),
counted AS (
    INSERT INTO delivery_counters AS k (delivery_id, shard, relayed, delivered, soft_bounced,
                                        hard_bounced, expired, opened, clicked)
    SELECT %(delivery_id)s, %(shard)s,
           count(*) FILTER (WHERE NOT was_relayed),
           count(*) FILTER (WHERE outcome = {Outcome.DELIVERED})
               - count(*) FILTER (WHERE old_outcome = {Outcome.DELIVERED}),
           count(*) FILTER (WHERE outcome = {Outcome.SOFT_BOUNCED})
               - count(*) FILTER (WHERE old_outcome = {Outcome.SOFT_BOUNCED}),
           count(*) FILTER (WHERE outcome = {Outcome.HARD_BOUNCED})
               - count(*) FILTER (WHERE old_outcome = {Outcome.HARD_BOUNCED}),
           count(*) FILTER (WHERE outcome = {Outcome.EXPIRED})
               - count(*) FILTER (WHERE old_outcome = {Outcome.EXPIRED}),
           count(*) FILTER (WHERE opened AND NOT old_opened),
           count(*) FILTER (WHERE clicked AND NOT old_clicked)
    FROM changes
    HAVING count(*) > 0
    ON CONFLICT (delivery_id, shard) DO UPDATE
    SET relayed = k.relayed + excluded.relayed,
        delivered = k.delivered + excluded.delivered,
        soft_bounced = k.soft_bounced + excluded.soft_bounced,
        hard_bounced = k.hard_bounced + excluded.hard_bounced,
        expired = k.expired + excluded.expired,
        opened = k.opened + excluded.opened,
        clicked = k.clicked + excluded.clicked
)
SELECT (SELECT count(*) FROM known) AS known, (SELECT count(*) FROM new_events) AS applied,
       (SELECT coalesce(array_agg(refusal), '{}') FROM known WHERE refusal IS NOT NULL)
           AS refusals;
