-- Sending logs and a profile's history.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: list_sending_logs
-- A page of a delivery's sending logs, in message order.
SELECT s.message_id, s.delivery_id, s.profile_id, s.email, s.status, s.failure_type,
       s.failure_reason, s.relay_time, s.update_time, s.opened, s.clicked,
       s.complained, s.smtp_code, s.smtp_status, s.smtp_text
FROM sending_logs s
WHERE s.delivery_id = %(delivery_id)s AND s.message_id > %(after)s
ORDER BY s.message_id
LIMIT %(limit)s;

-- name: list_sending_logs_by_status
-- A page of a delivery's sending logs with one status, in message order.
SELECT s.message_id, s.delivery_id, s.profile_id, s.email, s.status, s.failure_type,
       s.failure_reason, s.relay_time, s.update_time, s.opened, s.clicked,
       s.complained, s.smtp_code, s.smtp_status, s.smtp_text
FROM sending_logs s
WHERE s.delivery_id = %(delivery_id)s AND s.status = %(status)s AND s.message_id > %(after)s
ORDER BY s.message_id
LIMIT %(limit)s;

-- name: history_by_profile
-- A page of the messages sent to a profile, newest first.
SELECT s.message_id, s.delivery_id, s.profile_id, s.email, s.status, s.failure_type,
       s.failure_reason, s.relay_time, s.update_time, s.opened, s.clicked,
       s.complained, s.smtp_code, s.smtp_status, s.smtp_text
FROM sending_logs s
WHERE s.profile_id = %(profile_id)s AND s.message_id < %(before)s AND s.status <> {Status.QUEUED}
ORDER BY s.message_id DESC
LIMIT %(limit)s;

-- name: history_by_email
-- A page of the messages sent to an address, newest first.
SELECT s.message_id, s.delivery_id, s.profile_id, s.email, s.status, s.failure_type,
       s.failure_reason, s.relay_time, s.update_time, s.opened, s.clicked,
       s.complained, s.smtp_code, s.smtp_status, s.smtp_text
FROM sending_logs s
WHERE s.email = %(email)s AND s.message_id < %(before)s AND s.status <> {Status.QUEUED}
ORDER BY s.message_id DESC
LIMIT %(limit)s;

-- name: logs_pruned_time
-- When the retention pruned a delivery's sending logs; null while they are kept.
SELECT logs_pruned_time FROM deliveries WHERE id = %(delivery_id)s;

-- name: sending_logs_past_retention
-- The retention of the sending logs: the finished or stopped deliveries past it
-- (`beyond` after the end of their validity) whose feedback events are pruned already,
-- and which are not marked pruned yet or still have sending logs or dropped recipients;
-- at most `limit`.
SELECT d.id
FROM deliveries d
WHERE d.state IN ({State.FINISHED}, {State.STOPPED})
  AND d.events_pruned_time IS NOT NULL
  AND greatest(d.validity_end_time, d.finish_time) < %(now)s - %(beyond)s::interval
  AND (d.logs_pruned_time IS NULL
       OR EXISTS (SELECT FROM sending_logs s WHERE s.delivery_id = d.id)
       OR EXISTS (SELECT FROM dropped_recipients r WHERE r.delivery_id = d.id))
ORDER BY d.id
LIMIT %(limit)s;

-- name: mark_logs_pruned
-- From now on the delivery's logs are not listed and its figures not recounted; the
-- first time only: the time says when its logs began to go.
UPDATE deliveries SET logs_pruned_time = %(now)s
WHERE id = %(delivery_id)s AND logs_pruned_time IS NULL;

-- name: prune_sending_logs
-- Deletes up to `limit` of a delivery's sending logs, then of its dropped recipients
-- with what is left of `limit`; returns how many rows went.
WITH logs AS (
    SELECT message_id FROM sending_logs
    WHERE delivery_id = %(delivery_id)s
    LIMIT %(limit)s
),
logs_gone AS (
    DELETE FROM sending_logs s
    USING logs l
    WHERE s.delivery_id = %(delivery_id)s AND s.message_id = l.message_id
    RETURNING 1
),
dropped AS (
    SELECT position FROM dropped_recipients
    WHERE delivery_id = %(delivery_id)s
    LIMIT greatest(%(limit)s - (SELECT count(*) FROM logs), 0)
),
dropped_gone AS (
    DELETE FROM dropped_recipients r
    USING dropped d
    WHERE r.delivery_id = %(delivery_id)s AND r.position = d.position
    RETURNING 1
)
SELECT (SELECT count(*) FROM logs_gone) + (SELECT count(*) FROM dropped_gone);
