-- The end of the validity: every message gets a final status.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: expiring
-- Deliveries whose validity period (and the grace for late feedback) is over.
SELECT id FROM deliveries
WHERE state IN ({State.SENDING}, {State.SENT})
  AND validity_end_time + %(grace)s::interval <= now()
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
-- Writes the new state of a delivery's messages whose fate the end of the validity changed.
UPDATE sending_logs s
SET status = v.status, outcome = v.outcome, failure_type = v.failure_type,
    failure_reason = v.failure_reason, opened = v.opened, clicked = v.clicked,
    relay_time = coalesce(s.relay_time, %(now)s), update_time = %(now)s
FROM unnest(%(message_ids)s::bigint[], %(statuses)s::smallint[], %(outcomes)s::smallint[],
            %(failure_types)s::smallint[], %(failure_reasons)s::smallint[],
            %(opened)s::boolean[], %(clicked)s::boolean[])
     AS v (message_id, status, outcome, failure_type, failure_reason, opened, clicked)
WHERE s.delivery_id = %(delivery_id)s AND s.message_id = v.message_id;

-- name: set_finished
-- The validity period is over: the figures are final.
UPDATE deliveries SET state = {State.FINISHED}, finish_time = now() WHERE id = %(id)s;
