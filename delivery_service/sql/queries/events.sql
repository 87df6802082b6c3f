-- The delivery event feed (docs/events.md): pages of events after a position.
-- Each query: a `-- name: <name>` line, then a one-line description; a `-- part: <name>`
-- is SQL that queries share (`{part:<name>}`).

-- part: feed_event
-- An event of the feed as store.events.FeedEvent has it, after its position: from an
-- item `p` (its row's source and write time, its event id if it is feedback), its
-- message's sending log `s` and its feedback event `e` (null if none).
-- The event's id (docs/events.md): unique across deliveries, stable.
CASE WHEN p.event_id IS NOT NULL THEN 'feedback:' || s.delivery_id || ':' || p.event_id
     WHEN p.source = {FeedSource.EXPIRY} THEN 'expired:' || s.message_id
     ELSE 'relayed:' || s.message_id END AS event_id,
s.delivery_id, s.message_id, coalesce(s.profile_id, '') AS profile_id, s.email,
CASE WHEN p.event_id IS NOT NULL THEN (%(kinds_of_feedback)s::smallint[])[e.kind]
     WHEN p.source = {FeedSource.EXPIRY} THEN %(expired)s
     ELSE %(relayed)s END AS kind,
(extract(epoch FROM CASE WHEN p.event_id IS NOT NULL THEN e.event_time
                         WHEN p.source = {FeedSource.EXPIRY} THEN p.write_time
                         ELSE s.relay_time END) * 1000000)::bigint AS event_micros,
(extract(epoch FROM p.write_time) * 1000000)::bigint AS write_micros,
coalesce(e.attempt, 0) AS attempt, coalesce(e.reason, 0) AS reason,
coalesce(e.link_index, 0) AS link_index, coalesce(e.smtp_code, 0) AS smtp_code,
coalesce(e.smtp_status, '') AS smtp_status, coalesce(e.smtp_text, '') AS smtp_text

-- name: feed_page
-- The next items of the feed after a position (xid, seq, item), up to `limit`, one
-- delivery's or every delivery's: only rows of transactions below the oldest one still
-- in flight (pg_snapshot_xmin), which no later commit can precede. Each item with what
-- the consumer needs of its message and event; an item of a row that was cut is left
-- for the next page. Each row's items are sliced out of its arrays (`items` counts
-- them): a page reads no item it does not return. A declared fan-out (every
-- delivery's).
WITH rows AS (
    SELECT f.*, sum(f.available) OVER (ORDER BY f.xid, f.seq) - f.available AS before
    FROM (
        SELECT f.delivery_id, f.xid, f.seq, f.source, f.write_time, f.message_ids,
               f.event_ids, x.skipped, f.items - x.skipped AS available
        FROM delivery_feed f
        -- The position's own row: the items up to the position were served.
        CROSS JOIN LATERAL (
            SELECT CASE WHEN (f.xid, f.seq) = (%(after_xid)s::xid8, %(after_seq)s::bigint)
                        THEN %(after_item)s ELSE 0 END AS skipped
        ) x
        WHERE (f.xid, f.seq) >= (%(after_xid)s::xid8, %(after_seq)s::bigint)
          AND f.xid < pg_snapshot_xmin(pg_current_snapshot())
          AND (%(delivery_id)s::bigint IS NULL OR f.delivery_id = %(delivery_id)s)
        ORDER BY f.xid, f.seq
        -- One more: the position's own row may have no item left.
        LIMIT %(limit)s + 1
    ) f
),
taken AS (
    -- Each row's items on this page: (skipped, upto], messages first, then events.
    SELECT r.*, r.skipped + least(r.available, %(limit)s - r.before) AS upto,
           cardinality(r.message_ids) AS messages
    FROM rows r
    WHERE r.available > 0 AND r.before < %(limit)s
),
page AS (
    SELECT t.delivery_id, t.xid, t.seq, t.source, t.write_time, t.skipped + u.n AS item,
           u.message_id, NULL::text AS event_id
    FROM taken t
    CROSS JOIN LATERAL unnest(t.message_ids[t.skipped + 1 : t.upto])
         WITH ORDINALITY AS u (message_id, n)
    UNION ALL
    SELECT t.delivery_id, t.xid, t.seq, t.source, t.write_time,
           greatest(t.skipped, t.messages) + u.n, NULL, u.event_id
    FROM taken t
    CROSS JOIN LATERAL unnest(t.event_ids[greatest(t.skipped - t.messages, 0) + 1
                                          : t.upto - t.messages])
         WITH ORDINALITY AS u (event_id, n)
)
SELECT p.xid::text::bigint AS xid, p.seq, p.item::integer AS item,
       {part:feed_event}
FROM page p
LEFT JOIN feedback_events e ON e.delivery_id = p.delivery_id AND e.event_id = p.event_id
JOIN sending_logs s
  ON s.delivery_id = p.delivery_id AND s.message_id = coalesce(p.message_id, e.message_id)
ORDER BY p.xid, p.seq, p.item;

-- name: feed_end
-- The position after the last item committed now (below the oldest transaction in
-- flight), one delivery's or every delivery's. A declared fan-out.
SELECT f.xid::text::bigint, f.seq, f.items
FROM delivery_feed f
WHERE f.xid < pg_snapshot_xmin(pg_current_snapshot())
  AND (%(delivery_id)s::bigint IS NULL OR f.delivery_id = %(delivery_id)s)
ORDER BY f.xid DESC, f.seq DESC
LIMIT 1;

-- name: message_timeline
-- A message's events at their feed positions, in feed order: the relay and expiry rows
-- that list it, and the rows of the transactions that logged its feedback events
-- (events logged before the feed existed have no position: first, by time). The same
-- columns as feed_page.
WITH items AS (
    SELECT f.xid, f.seq, array_position(f.message_ids, %(message_id)s) AS item, f.source,
           f.write_time, NULL::text AS event_id
    FROM delivery_feed f
    WHERE f.delivery_id = %(delivery_id)s
      AND f.source IN ({FeedSource.RELAY}, {FeedSource.EXPIRY})
      AND %(message_id)s BETWEEN f.first_message_id AND f.last_message_id
      AND %(message_id)s = ANY (f.message_ids)
    UNION ALL
    SELECT f.xid, f.seq, cardinality(f.message_ids) + array_position(f.event_ids, e.event_id),
           {FeedSource.FEEDBACK}, coalesce(f.write_time, e.apply_time), e.event_id
    FROM feedback_events e
    LEFT JOIN delivery_feed f
           ON f.delivery_id = %(delivery_id)s AND f.xid = e.xid
          AND f.source = {FeedSource.FEEDBACK} AND e.event_id = ANY (f.event_ids)
    WHERE e.delivery_id = %(delivery_id)s AND e.message_id = %(message_id)s
)
-- No position is (0, 0, 0): no transaction has id 0.
SELECT coalesce(p.xid::text::bigint, 0) AS xid, coalesce(p.seq, 0) AS seq,
       coalesce(p.item, 0)::integer AS item,
       {part:feed_event}
FROM items p
JOIN sending_logs s ON s.delivery_id = %(delivery_id)s AND s.message_id = %(message_id)s
LEFT JOIN feedback_events e ON e.delivery_id = %(delivery_id)s AND e.event_id = p.event_id
ORDER BY p.xid NULLS FIRST, p.seq, p.item, event_micros, p.event_id;

-- name: feed_horizon
-- The last position the retention pruned (none before the first pruning).
SELECT xid::text::bigint, seq, items FROM delivery_feed_horizon;

-- name: prune_feed
-- The retention: deletes the oldest rows of the feed, in feed order, up to the first
-- one still within its delivery's retention (its validity period plus `beyond` after
-- it was written), at most `limit` at a time; remembers the last one deleted (the
-- horizon: a cursor before it is out of range). Returns how many it deleted.
WITH head AS (
    SELECT f.delivery_id, f.xid, f.seq, f.items,
           f.write_time < %(now)s - (d.validity_period + %(beyond)s::interval) AS expired
    FROM delivery_feed f
    JOIN deliveries d ON d.id = f.delivery_id
    WHERE f.xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY f.xid, f.seq
    LIMIT %(limit)s
),
kept AS (
    SELECT xid, seq FROM head WHERE NOT expired ORDER BY xid, seq LIMIT 1
),
prefix AS (
    SELECT h.* FROM head h
    WHERE NOT EXISTS (SELECT FROM kept k WHERE (k.xid, k.seq) <= (h.xid, h.seq))
),
gone AS (
    DELETE FROM delivery_feed f
    USING prefix p
    WHERE f.delivery_id = p.delivery_id AND f.xid = p.xid AND f.seq = p.seq
),
horizon AS (
    INSERT INTO delivery_feed_horizon AS h (xid, seq, items)
    SELECT xid, seq, items FROM prefix ORDER BY xid DESC, seq DESC LIMIT 1
    ON CONFLICT (only_row) DO UPDATE SET xid = excluded.xid, seq = excluded.seq,
                                         items = excluded.items
)
SELECT count(*) FROM prefix;

-- name: event_log_past_retention
-- The retention of the feedback event log: the finished or stopped deliveries past
-- their retention (`beyond` after the end of their validity) whose rows of the event
-- feed are all pruned, and which are not marked pruned yet or still have feedback
-- events; at most `limit`.
SELECT d.id
FROM deliveries d
WHERE d.state IN ({State.FINISHED}, {State.STOPPED})
  AND greatest(d.validity_end_time, d.finish_time) < %(now)s - %(beyond)s::interval
  AND NOT EXISTS (SELECT FROM delivery_feed f WHERE f.delivery_id = d.id)
  AND (d.events_pruned_time IS NULL
       OR EXISTS (SELECT FROM feedback_events e WHERE e.delivery_id = d.id))
ORDER BY d.id
LIMIT %(limit)s;

-- name: mark_events_pruned
-- From now on feedback about the delivery is refused (past_retention); the first time
-- only: the time says when its event log began to go.
UPDATE deliveries SET events_pruned_time = %(now)s
WHERE id = %(delivery_id)s AND events_pruned_time IS NULL;

-- name: prune_feedback_events
-- Deletes up to `limit` of a delivery's feedback events; returns how many.
WITH doomed AS (
    SELECT event_id FROM feedback_events
    WHERE delivery_id = %(delivery_id)s
    LIMIT %(limit)s
),
gone AS (
    DELETE FROM feedback_events f
    USING doomed d
    WHERE f.delivery_id = %(delivery_id)s AND f.event_id = d.event_id
    RETURNING 1
)
SELECT count(*) FROM gone;
