-- Recurring deliveries and their occurrences.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: insert_recurring
-- Creates a recurring delivery; nothing if its creator's request_id is taken.
INSERT INTO recurring_deliveries (label, subject, body, links, target_id, feedback_mode,
                                  validity_period, required_approvals, occurrence_interval,
                                  confirm_before_send, next_occurrence_time, request_id,
                                  created_by, request_digest)
VALUES (%(label)s, %(subject)s, %(body)s, %(links)s, %(target_id)s, %(feedback_mode)s,
        %(validity_period)s, %(required_approvals)s, %(occurrence_interval)s,
        %(confirm_before_send)s, %(next_occurrence_time)s, %(request_id)s,
        %(created_by)s, %(request_digest)s)
ON CONFLICT ON CONSTRAINT recurring_deliveries_request_id_key DO NOTHING
RETURNING id;

-- name: recurring_id_by_request
-- The recurring delivery an operator's request_id created, and that request's digest.
SELECT id, request_digest FROM recurring_deliveries
WHERE created_by = %(operator)s AND request_id = %(request_id)s;

-- name: get_recurring
-- One recurring delivery.
SELECT id, label, occurrence_interval, confirm_before_send, next_occurrence_time, occurrences, state,
       created_by
FROM recurring_deliveries WHERE id = %(id)s;

-- name: due_recurring
-- Active recurring deliveries whose next occurrence is due, locked; other processes skip
-- them.
SELECT id, confirm_before_send, created_by FROM recurring_deliveries
WHERE state = {RecurringState.ACTIVE} AND next_occurrence_time <= %(now)s
ORDER BY next_occurrence_time
LIMIT 10
FOR UPDATE SKIP LOCKED;

-- name: insert_occurrence
-- Creates the next occurrence of a recurring delivery, in state DRAFT.
INSERT INTO deliveries (label, subject, body, links, target_id, feedback_mode,
                        validity_period, required_approvals, state, recurring_delivery_id,
                        created_by)
SELECT label || ' #' || (occurrences + 1), subject, body, links, target_id, feedback_mode,
       validity_period, required_approvals, {State.DRAFT}, id, created_by
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

-- name: lock_recurring
-- A recurring delivery's state, locked until the transaction ends.
SELECT state FROM recurring_deliveries WHERE id = %(id)s FOR UPDATE;

-- name: set_recurring_state
-- Pauses, resumes or cancels a recurring delivery. On resuming, occurrences missed
-- while paused are skipped: the next one is due at the first interval boundary from now.
UPDATE recurring_deliveries
SET state = %(state)s,
    next_occurrence_time = CASE WHEN %(state)s = {RecurringState.ACTIVE}
        THEN next_occurrence_time + occurrence_interval * greatest(0, ceil(
            extract(epoch FROM %(now)s::timestamptz - next_occurrence_time)
            / extract(epoch FROM occurrence_interval)))
        ELSE next_occurrence_time END
WHERE id = %(id)s;
