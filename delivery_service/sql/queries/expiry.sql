-- The end of the validity: every message gets a final status.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: expiring
-- Deliveries whose validity period is over by the service's clock (the grace for late
-- feedback is waited on the monotonic clock: usecases.figures.ValidityEnds).
SELECT id FROM deliveries
WHERE state IN ({State.SENDING}, {State.SENT})
  AND validity_end_time <= %(now)s
ORDER BY id;

-- name: unsettled_messages
-- Messages whose fate the end of the validity can still change, in message order.
SELECT s.message_id, s.delivery_id, d.feedback_mode, s.relay_time IS NOT NULL AS relayed,
       s.outcome, s.failure_reason, s.opened, s.clicked
FROM sending_logs s JOIN deliveries d ON d.id = s.delivery_id
WHERE s.delivery_id = %(delivery_id)s AND s.message_id > %(after)s
  AND (s.outcome = {Outcome.SOFT_BOUNCED} OR s.relay_time IS NULL
       OR (d.feedback_mode = {FeedbackMode.EFS} AND s.outcome = {Outcome.NONE}))
ORDER BY s.message_id
LIMIT %(limit)s
FOR UPDATE OF s;

-- name: update_messages
-- Writes the new state of a delivery's messages whose fate the end of the validity
-- changed, and moves them in the delivery's counters, by domain and by failure, in the
-- same statement (the caller holds the counters exclusively).
WITH v AS (
    SELECT * FROM unnest(%(message_ids)s::bigint[], %(statuses)s::smallint[],
                         %(outcomes)s::smallint[], %(failure_types)s::smallint[],
                         %(failure_reasons)s::smallint[])
                  AS v (message_id, status, outcome, failure_type, failure_reason)
),
changes AS (
    -- Each message's old state (the statement's snapshot: before the update) and new.
    SELECT s.domain_rank, s.relay_time IS NOT NULL AS was_relayed, s.status AS old_status,
           s.outcome AS old_outcome, s.failure_type AS old_failure_type,
           s.failure_reason AS old_failure_reason, v.*
    FROM v JOIN sending_logs s
         ON s.delivery_id = %(delivery_id)s AND s.message_id = v.message_id
),
updated AS (
    UPDATE sending_logs s
    SET status = c.status, outcome = c.outcome, failure_type = c.failure_type,
        failure_reason = c.failure_reason, relay_time = coalesce(s.relay_time, %(now)s),
        update_time = %(now)s
    FROM changes c
    WHERE s.delivery_id = %(delivery_id)s AND s.message_id = c.message_id
),
deltas AS (
    SELECT domain_rank,
           count(*) FILTER (WHERE NOT was_relayed) AS relayed,
           count(*) FILTER (WHERE outcome = {Outcome.DELIVERED})
               - count(*) FILTER (WHERE old_outcome = {Outcome.DELIVERED}) AS delivered,
           count(*) FILTER (WHERE outcome = {Outcome.SOFT_BOUNCED})
               - count(*) FILTER (WHERE old_outcome = {Outcome.SOFT_BOUNCED}) AS soft_bounced,
           count(*) FILTER (WHERE outcome = {Outcome.HARD_BOUNCED})
               - count(*) FILTER (WHERE old_outcome = {Outcome.HARD_BOUNCED}) AS hard_bounced,
           count(*) FILTER (WHERE outcome = {Outcome.EXPIRED})
               - count(*) FILTER (WHERE old_outcome = {Outcome.EXPIRED}) AS expired
    FROM changes
    GROUP BY domain_rank
),
counted AS (
    INSERT INTO delivery_counters AS k (delivery_id, shard, relayed, delivered, soft_bounced,
                                        hard_bounced, expired)
    SELECT %(delivery_id)s, 0, sum(relayed), sum(delivered), sum(soft_bounced),
           sum(hard_bounced), sum(expired)
    FROM deltas
    HAVING count(*) > 0
    ON CONFLICT (delivery_id, shard) DO UPDATE
    SET relayed = k.relayed + excluded.relayed,
        delivered = k.delivered + excluded.delivered,
        soft_bounced = k.soft_bounced + excluded.soft_bounced,
        hard_bounced = k.hard_bounced + excluded.hard_bounced,
        expired = k.expired + excluded.expired
),
fed AS (
    -- The event feed's row (docs/events.md): every message written here expired.
    INSERT INTO delivery_feed (delivery_id, source, message_ids, first_message_id,
                               last_message_id)
    SELECT %(delivery_id)s, {FeedSource.EXPIRY}, array_agg(message_id ORDER BY message_id),
           min(message_id), max(message_id)
    FROM changes
    WHERE outcome = {Outcome.EXPIRED}
    HAVING count(*) > 0
),
domain_counted AS (
    INSERT INTO delivery_domain_counters AS k (delivery_id, domain_rank, shard, relayed,
                                               delivered, soft_bounced, hard_bounced, expired)
    SELECT %(delivery_id)s, domain_rank, 0, relayed, delivered, soft_bounced, hard_bounced,
           expired
    FROM deltas
    -- In key order, as every writer of these rows: no two transactions wait on each
    -- other's new rows.
    ORDER BY domain_rank
    ON CONFLICT (delivery_id, domain_rank, shard) DO UPDATE
    SET relayed = k.relayed + excluded.relayed,
        delivered = k.delivered + excluded.delivered,
        soft_bounced = k.soft_bounced + excluded.soft_bounced,
        hard_bounced = k.hard_bounced + excluded.hard_bounced,
        expired = k.expired + excluded.expired
)
-- Failed messages by failure type and reason: each message that leaves a (type,
-- reason) counts -1 there, each that comes +1.
INSERT INTO delivery_failure_counters AS k (delivery_id, failure_type, failure_reason, shard,
                                            failed)
SELECT %(delivery_id)s, f.failure_type, f.failure_reason, 0, sum(f.delta)
FROM (
    SELECT old_failure_type AS failure_type, old_failure_reason AS failure_reason, -1 AS delta
    FROM changes WHERE old_status = {Status.FAILED}
    UNION ALL
    SELECT failure_type, failure_reason, 1 FROM changes WHERE status = {Status.FAILED}
) f
GROUP BY f.failure_type, f.failure_reason
HAVING sum(f.delta) <> 0
ORDER BY f.failure_type, f.failure_reason
ON CONFLICT (delivery_id, failure_type, failure_reason, shard) DO UPDATE
SET failed = k.failed + excluded.failed;

-- name: set_finished
-- The validity period is over: the figures are final.
UPDATE deliveries SET state = {State.FINISHED}, finish_time = %(now)s WHERE id = %(id)s;
