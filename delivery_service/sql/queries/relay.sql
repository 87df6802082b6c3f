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
-- counted once: here in its domain's counters, and by the caller in the delivery's;
-- and each is in the event feed once (a row of the messages marked). Returns how many
-- it marked.
WITH marked AS (
    UPDATE sending_logs
    SET relay_time = %(now)s, status = %(status)s, update_time = %(now)s
    WHERE delivery_id = %(delivery_id)s AND message_id > %(after)s
      AND message_id <= %(upto)s AND relay_time IS NULL
    RETURNING domain_rank, message_id
),
fed AS (
    INSERT INTO delivery_feed (delivery_id, source, message_ids, first_message_id,
                               last_message_id)
    SELECT %(delivery_id)s, {FeedSource.RELAY}, array_agg(message_id ORDER BY message_id),
           min(message_id), max(message_id)
    FROM marked
    HAVING count(*) > 0
),
by_rank AS (
    SELECT domain_rank, count(*) AS messages FROM marked GROUP BY domain_rank
),
domain_counted AS (
    INSERT INTO delivery_domain_counters AS k (delivery_id, domain_rank, shard, relayed)
    SELECT %(delivery_id)s, domain_rank, %(shard)s, messages FROM by_rank
    -- In key order, as the ingest's: no two transactions wait on each other's new rows.
    ORDER BY domain_rank
    ON CONFLICT (delivery_id, domain_rank, shard) DO UPDATE
    SET relayed = k.relayed + excluded.relayed
)
SELECT coalesce(sum(messages), 0)::bigint FROM by_rank;

-- name: set_sent
-- Every message is relayed: the delivery is SENT.
UPDATE deliveries SET state = {State.SENT}
WHERE id = %(id)s AND state = {State.SENDING}
  AND NOT EXISTS (SELECT 1 FROM sending_logs
                  WHERE delivery_id = %(id)s AND relay_time IS NULL AND outcome = {Outcome.NONE});
