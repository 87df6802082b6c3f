-- The relay: SENDING deliveries, the lease on each, queued messages, marked relayed.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: sending_deliveries
-- The deliveries whose messages are being relayed.
SELECT id FROM deliveries WHERE state = {State.SENDING} ORDER BY id;

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
  AND relay_time IS NULL AND outcome = {Outcome.NONE}
  AND EXISTS (SELECT 1 FROM deliveries WHERE id = %(delivery_id)s AND state = {State.SENDING})
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
UPDATE deliveries SET state = {State.SENT}
WHERE id = %(id)s AND state = {State.SENDING}
  AND NOT EXISTS (SELECT 1 FROM sending_logs
                  WHERE delivery_id = %(id)s AND relay_time IS NULL AND outcome = {Outcome.NONE});
