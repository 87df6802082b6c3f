-- Deliveries: creation, reads and the lifecycle changes callers make.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: insert_target
-- Creates a target: a segment, or (segment null) a recipient list filled by COPY.
INSERT INTO targets (segment) VALUES (%(segment)s) RETURNING id;

-- name: copy_target_recipients
-- Fills a target's recipient list.
COPY target_recipients (target_id, position, profile_id, email) FROM STDIN;

-- name: target_list
-- A target's segment (null for a recipient list) and its list's length: the position
-- after its last recipient.
SELECT t.segment,
       coalesce((SELECT max(r.position) + 1 FROM target_recipients r
                 WHERE r.target_id = %(target_id)s), 0) AS length
FROM targets t
WHERE t.id = %(target_id)s;

-- name: recipients_at
-- A recipient list's recipients at positions [first, end), in order.
SELECT profile_id, email FROM target_recipients
WHERE target_id = %(target_id)s AND position >= %(first)s AND position < %(end)s
ORDER BY position;

-- name: insert_delivery
-- Creates a delivery in state DRAFT.
INSERT INTO deliveries (label, subject, body, links, target_id, feedback_mode,
                        validity_period, required_approvals, state, recurring_delivery_id,
                        created_by)
VALUES (%(label)s, %(subject)s, %(body)s, %(links)s, %(target_id)s, %(feedback_mode)s,
        %(validity_period)s, %(required_approvals)s, {State.DRAFT}, %(recurring_delivery_id)s,
        %(created_by)s)
RETURNING id;

-- name: claim_delivery_request
-- Records the delivery an operator's request_id created, in the same transaction;
-- nothing if another request of that operator took the request_id first.
INSERT INTO delivery_requests (request_id, operator, delivery_id, request_digest)
VALUES (%(request_id)s, %(operator)s, %(delivery_id)s, %(request_digest)s)
ON CONFLICT (request_id, operator) DO NOTHING
RETURNING delivery_id;

-- name: delivery_id_by_request
-- The delivery an operator's request_id created, and the digest of that request.
SELECT delivery_id, request_digest FROM delivery_requests
WHERE request_id = %(request_id)s AND operator = %(operator)s;

-- name: get_delivery
-- One delivery.
SELECT id, label, subject, body, links, target_id, feedback_mode, validity_period,
       required_approvals, approvals, state, targeted, to_deliver, dropped,
       recurring_delivery_id, create_time, confirm_time, confirmed_by, validity_end_time,
       created_by
FROM deliveries WHERE id = %(id)s;

-- name: lock_delivery
-- One delivery, locked until the transaction ends.
SELECT id, label, subject, body, links, target_id, feedback_mode, validity_period,
       required_approvals, approvals, state, targeted, to_deliver, dropped,
       recurring_delivery_id, create_time, confirm_time, confirmed_by, validity_end_time,
       created_by
FROM deliveries WHERE id = %(id)s FOR UPDATE;

-- name: list_deliveries
-- A page of deliveries, newest first, optionally of one state or recurring delivery;
-- the bodies only if `full`, and then the page's bodies are at most max_bytes (but one
-- delivery at least).
SELECT id, label, subject, CASE WHEN %(full)s THEN body ELSE '' END AS body, links,
       target_id, feedback_mode, validity_period, required_approvals, approvals, state,
       targeted, to_deliver, dropped, recurring_delivery_id, create_time, confirm_time,
       confirmed_by, validity_end_time, created_by, page_rows
FROM (
    SELECT id, label, subject, body, links, target_id, feedback_mode, validity_period,
           required_approvals, approvals, state, targeted, to_deliver, dropped,
           recurring_delivery_id, create_time, confirm_time, confirmed_by, validity_end_time,
           created_by,
           -- The bytes of the bodies of the page up to this one (their stored size: no
           -- body is read to count it).
           sum(octet_length(body)) OVER (ORDER BY id DESC ROWS UNBOUNDED PRECEDING)
               AS through,
           count(*) OVER () AS page_rows,
           row_number() OVER (ORDER BY id DESC) AS n
    FROM deliveries
    WHERE id < %(before_id)s
      AND (%(state)s::text IS NULL OR state = %(state)s)
      AND (%(recurring_delivery_id)s::bigint IS NULL
           OR recurring_delivery_id = %(recurring_delivery_id)s)
    ORDER BY id DESC
    LIMIT %(limit)s
) page
WHERE NOT %(full)s OR page.through <= %(max_bytes)s OR page.n = 1
ORDER BY id DESC;

-- name: set_approvals
-- Records the approval steps done and the state they lead to.
UPDATE deliveries SET state = %(state)s, approvals = %(approvals)s WHERE id = %(id)s;

-- name: set_confirmed
-- Starts the send: SENDING, and the validity period runs from now.
UPDATE deliveries
SET state = {State.SENDING}, confirm_time = %(now)s, confirmed_by = %(operator)s,
    validity_end_time = %(now)s::timestamptz + validity_period
WHERE id = %(id)s;

-- name: set_stopped
-- Stops a delivery.
UPDATE deliveries SET state = {State.STOPPED}, finish_time = %(now)s WHERE id = %(id)s;
