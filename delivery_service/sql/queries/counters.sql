-- The KPI counters: sharded deltas, the locks that keep a recount exact, stats.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: counters
-- A delivery's KPI counters: the sum of its shards.
SELECT coalesce(sum(relayed), 0)::bigint AS relayed,
       coalesce(sum(delivered), 0)::bigint AS delivered,
       coalesce(sum(soft_bounced), 0)::bigint AS soft_bounced,
       coalesce(sum(hard_bounced), 0)::bigint AS hard_bounced,
       coalesce(sum(expired), 0)::bigint AS expired,
       coalesce(sum(opened), 0)::bigint AS opened,
       coalesce(sum(clicked), 0)::bigint AS clicked
FROM delivery_counters WHERE delivery_id = %(delivery_id)s;

-- name: delivery_figures
-- What a delivery's KPIs come from: its figures and the sum of its counter shards, in
-- one statement (GetKpis' hot path), without the content.
SELECT d.id, d.state, d.feedback_mode, d.to_deliver, d.stats_time, d.opened_at_stats,
       d.clicked_at_stats, c.relayed, c.delivered, c.soft_bounced, c.hard_bounced,
       c.expired, c.opened, c.clicked
FROM deliveries d
CROSS JOIN LATERAL (
    SELECT coalesce(sum(relayed), 0)::bigint AS relayed,
           coalesce(sum(delivered), 0)::bigint AS delivered,
           coalesce(sum(soft_bounced), 0)::bigint AS soft_bounced,
           coalesce(sum(hard_bounced), 0)::bigint AS hard_bounced,
           coalesce(sum(expired), 0)::bigint AS expired,
           coalesce(sum(opened), 0)::bigint AS opened,
           coalesce(sum(clicked), 0)::bigint AS clicked
    FROM delivery_counters WHERE delivery_id = %(id)s
) c
WHERE d.id = %(id)s;

-- name: add_counters
-- Adds deltas to one shard of a delivery's counters.
INSERT INTO delivery_counters AS c (delivery_id, shard, relayed, delivered, soft_bounced,
                                    hard_bounced, expired, opened, clicked)
VALUES (%(delivery_id)s, %(shard)s, %(relayed)s, %(delivered)s, %(soft_bounced)s,
        %(hard_bounced)s, %(expired)s, %(opened)s, %(clicked)s)
ON CONFLICT (delivery_id, shard) DO UPDATE
SET relayed = c.relayed + excluded.relayed,
    delivered = c.delivered + excluded.delivered,
    soft_bounced = c.soft_bounced + excluded.soft_bounced,
    hard_bounced = c.hard_bounced + excluded.hard_bounced,
    expired = c.expired + excluded.expired,
    opened = c.opened + excluded.opened,
    clicked = c.clicked + excluded.clicked;

-- name: lock_counters_shared
-- Taken by every change to counters: ComputeStats takes it exclusively to see them still.
SELECT pg_advisory_xact_lock_shared(1, mod(d, 2147483647)::integer)
FROM unnest(%(delivery_ids)s::bigint[]) AS d ORDER BY d;

-- name: lock_counters_exclusive
-- Taken by ComputeStats: no counter of the delivery changes until it commits.
SELECT pg_advisory_xact_lock(1, mod(%(delivery_id)s::bigint, 2147483647)::integer);

-- name: recount
-- Every counter of a delivery, recomputed from its sending and tracking logs.
SELECT count(*) FILTER (WHERE relay_time IS NOT NULL) AS relayed,
       count(*) FILTER (WHERE outcome = {Outcome.DELIVERED}) AS delivered,
       count(*) FILTER (WHERE outcome = {Outcome.SOFT_BOUNCED}) AS soft_bounced,
       count(*) FILTER (WHERE outcome = {Outcome.HARD_BOUNCED}) AS hard_bounced,
       count(*) FILTER (WHERE outcome = {Outcome.EXPIRED}) AS expired,
       (SELECT count(DISTINCT message_id) FROM tracking_logs
        WHERE delivery_id = %(delivery_id)s) AS opened,
       (SELECT count(DISTINCT message_id) FROM tracking_logs
        WHERE delivery_id = %(delivery_id)s AND kind = {EventKind.CLICKED}) AS clicked
FROM sending_logs WHERE delivery_id = %(delivery_id)s;

-- name: clear_counters
-- Drops a delivery's counter shards, before they are replaced by a recount.
DELETE FROM delivery_counters WHERE delivery_id = %(delivery_id)s;

-- name: set_stats
-- Records the open and click counts of a stats computation.
UPDATE deliveries SET stats_time = now(), opened_at_stats = %(opened)s,
                      clicked_at_stats = %(clicked)s
WHERE id = %(id)s;

-- name: refresh_stats
-- The scheduled refresh of Open % and Click %: from the counters, for the
-- deliveries whose figures are older than the stats interval and not final yet.
UPDATE deliveries d
SET stats_time = now(), opened_at_stats = c.opened, clicked_at_stats = c.clicked
FROM (SELECT delivery_id, sum(opened)::bigint AS opened, sum(clicked)::bigint AS clicked
      FROM delivery_counters GROUP BY delivery_id) c
WHERE c.delivery_id = d.id
  AND d.state IN ({State.SENDING}, {State.SENT})
  AND (d.stats_time IS NULL OR d.stats_time <= now() - %(interval)s::interval)
RETURNING d.id;
