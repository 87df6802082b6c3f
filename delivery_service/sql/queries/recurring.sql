-- Recurring deliveries and their occurrences.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: insert_recurring
-- Creates a recurring delivery; nothing if its request_id is taken.
INSERT INTO recurring_deliveries (label, subject, body, links, target_id, feedback_mode,
                                  validity_period, required_approvals, occurrence_interval,
                                  confirm_before_send, next_occurrence_time, request_id)
VALUES (%(label)s, %(subject)s, %(body)s, %(links)s, %(target_id)s, %(feedback_mode)s,
        %(validity_period)s, %(required_approvals)s, %(occurrence_interval)s,
        %(confirm_before_send)s, %(next_occurrence_time)s, %(request_id)s)
ON CONFLICT ON CONSTRAINT recurring_deliveries_request_id_key DO NOTHING
RETURNING id;

-- name: recurring_id_by_request
-- The recurring delivery a request_id created.
SELECT id FROM recurring_deliveries WHERE request_id = %(request_id)s;

-- name: get_recurring
-- One recurring delivery.
SELECT id, label, occurrence_interval, confirm_before_send, next_occurrence_time, occurrences
FROM recurring_deliveries WHERE id = %(id)s;

-- name: due_recurring
-- Recurring deliveries whose next occurrence is due, locked; other processes skip them.
SELECT id, confirm_before_send FROM recurring_deliveries
WHERE next_occurrence_time <= now()
ORDER BY next_occurrence_time
LIMIT 10
FOR UPDATE SKIP LOCKED;

-- name: insert_occurrence
-- Creates the next occurrence of a recurring delivery, in state DRAFT.
INSERT INTO deliveries (label, subject, body, links, target_id, feedback_mode,
                        validity_period, required_approvals, state, recurring_delivery_id)
SELECT label || ' #' || (occurrences + 1), subject, body, links, target_id, feedback_mode,
       validity_period, required_approvals, {State.DRAFT}, id
FROM recurring_deliveries WHERE id = %(id)s
RETURNING id;

-- name: advance_recurring
-- Schedules the next occurrence: the first interval boundary after now, so
-- that missed occurrences are skipped rather than sent in a burst.
UPDATE recurring_deliveries
SET occurrences = occurrences + 1,
    next_occurrence_time = next_occurrence_time + occurrence_interval * (1 + floor(
        extract(epoch FROM %(now)s::timestamptz - next_occurrence_time)
        / extract(epoch FROM occurrence_interval)))
WHERE id = %(id)s;
