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
