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
       coalesce(sum(clicked), 0)::bigint AS clicked,
       coalesce(sum(complained), 0)::bigint AS complained
FROM delivery_counters WHERE delivery_id = %(delivery_id)s;

-- name: delivery_figures
-- What a delivery's KPIs come from: its figures and the sum of its counter shards, in
-- one statement (GetKpis' hot path), without the content.
SELECT d.id, d.state, d.feedback_mode, d.to_deliver, d.stats_time, d.opened_at_stats,
       d.clicked_at_stats, c.relayed, c.delivered, c.soft_bounced, c.hard_bounced,
       c.expired, c.opened, c.clicked, c.complained, dc.domain_counters, dn.domain_names,
       fc.failure_counters, al.alerts
FROM deliveries d
CROSS JOIN LATERAL (
    SELECT coalesce(sum(relayed), 0)::bigint AS relayed,
           coalesce(sum(delivered), 0)::bigint AS delivered,
           coalesce(sum(soft_bounced), 0)::bigint AS soft_bounced,
           coalesce(sum(hard_bounced), 0)::bigint AS hard_bounced,
           coalesce(sum(expired), 0)::bigint AS expired,
           coalesce(sum(opened), 0)::bigint AS opened,
           coalesce(sum(clicked), 0)::bigint AS clicked,
           coalesce(sum(complained), 0)::bigint AS complained
    FROM delivery_counters WHERE delivery_id = %(id)s
) c
CROSS JOIN LATERAL (
    -- The breakdown: each domain rank's counters (rank, to deliver, then as above)...
    SELECT coalesce(array_agg(ARRAY[x.domain_rank, x.to_deliver, x.relayed, x.delivered,
                                    x.soft_bounced, x.hard_bounced, x.expired, x.opened,
                                    x.clicked, x.complained] ORDER BY x.domain_rank),
                    '{}') AS domain_counters
    FROM (
        SELECT domain_rank::bigint AS domain_rank, sum(to_deliver)::bigint AS to_deliver,
               sum(relayed)::bigint AS relayed, sum(delivered)::bigint AS delivered,
               sum(soft_bounced)::bigint AS soft_bounced,
               sum(hard_bounced)::bigint AS hard_bounced, sum(expired)::bigint AS expired,
               sum(opened)::bigint AS opened, sum(clicked)::bigint AS clicked,
               sum(complained)::bigint AS complained
        FROM delivery_domain_counters WHERE delivery_id = %(id)s
        GROUP BY domain_rank
    ) x
) dc
CROSS JOIN LATERAL (
    -- ... the ranked domains' names, in rank order...
    SELECT coalesce(array_agg(domain ORDER BY domain_rank), '{}') AS domain_names
    FROM delivery_domains WHERE delivery_id = %(id)s
) dn
CROSS JOIN LATERAL (
    -- ... and the failed messages by (type, reason).
    SELECT coalesce(array_agg(ARRAY[f.failure_type, f.failure_reason, f.failed]), '{}')
               AS failure_counters
    FROM (
        SELECT failure_type::bigint AS failure_type, failure_reason::bigint AS failure_reason,
               sum(failed)::bigint AS failed
        FROM delivery_failure_counters WHERE delivery_id = %(id)s
        GROUP BY failure_type, failure_reason
        HAVING sum(failed) <> 0
    ) f
) fc
CROSS JOIN LATERAL (
    -- Its alerts, newest first.
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'delivery_id', delivery_id, 'criterion', criterion, 'raise_time', raise_time,
               'value', value, 'threshold', threshold, 'message', message,
               'stopped', stopped) ORDER BY raise_time DESC, criterion DESC), '[]') AS alerts
    FROM delivery_alerts WHERE delivery_id = %(id)s
) al
WHERE d.id = %(id)s;

-- name: add_counters
-- Adds deltas to one shard of a delivery's counters.
INSERT INTO delivery_counters AS c (delivery_id, shard, relayed, delivered, soft_bounced,
                                    hard_bounced, expired, opened, clicked, complained)
VALUES (%(delivery_id)s, %(shard)s, %(relayed)s, %(delivered)s, %(soft_bounced)s,
        %(hard_bounced)s, %(expired)s, %(opened)s, %(clicked)s, %(complained)s)
ON CONFLICT (delivery_id, shard) DO UPDATE
SET relayed = c.relayed + excluded.relayed,
    delivered = c.delivered + excluded.delivered,
    soft_bounced = c.soft_bounced + excluded.soft_bounced,
    hard_bounced = c.hard_bounced + excluded.hard_bounced,
    expired = c.expired + excluded.expired,
    opened = c.opened + excluded.opened,
    clicked = c.clicked + excluded.clicked,
    complained = c.complained + excluded.complained;

-- name: lock_counters_shared
-- Taken by every change to counters: ComputeStats takes it exclusively to see them still.
SELECT pg_advisory_xact_lock_shared(1, mod(d, 2147483647)::integer)
FROM unnest(%(delivery_ids)s::bigint[]) AS d ORDER BY d;

-- name: lock_counters_exclusive
-- Taken by ComputeStats: no counter of the delivery changes until it commits.
SELECT pg_advisory_xact_lock(1, mod(%(delivery_id)s::bigint, 2147483647)::integer);

-- name: recount
-- Every counter of a delivery, recomputed from its sending and tracking logs; once the
-- retention pruned its feedback events (its tracking logs), opens, clicks and
-- complaints from the flags its sending logs kept of them.
WITH pruned AS (
    SELECT events_pruned_time IS NOT NULL AS pruned FROM deliveries
    WHERE id = %(delivery_id)s
)
SELECT count(*) FILTER (WHERE relay_time IS NOT NULL) AS relayed,
       count(*) FILTER (WHERE outcome = {Outcome.DELIVERED}) AS delivered,
       count(*) FILTER (WHERE outcome = {Outcome.SOFT_BOUNCED}) AS soft_bounced,
       count(*) FILTER (WHERE outcome = {Outcome.HARD_BOUNCED}) AS hard_bounced,
       count(*) FILTER (WHERE outcome = {Outcome.EXPIRED}) AS expired,
       CASE WHEN (SELECT pruned FROM pruned) THEN count(*) FILTER (WHERE opened)
            ELSE (SELECT count(DISTINCT message_id) FROM tracking_logs
                  WHERE delivery_id = %(delivery_id)s) END AS opened,
       CASE WHEN (SELECT pruned FROM pruned) THEN count(*) FILTER (WHERE clicked)
            ELSE (SELECT count(DISTINCT message_id) FROM tracking_logs
                  WHERE delivery_id = %(delivery_id)s AND kind = {EventKind.CLICKED}) END
           AS clicked,
       CASE WHEN (SELECT pruned FROM pruned) THEN count(*) FILTER (WHERE complained)
            ELSE (SELECT count(DISTINCT message_id) FROM feedback_events
                  WHERE delivery_id = %(delivery_id)s AND kind = {EventKind.COMPLAINT}) END
           AS complained
FROM sending_logs WHERE delivery_id = %(delivery_id)s;

-- name: clear_counters
-- Drops a delivery's counter shards, before they are replaced by a recount.
DELETE FROM delivery_counters WHERE delivery_id = %(delivery_id)s;

-- name: set_stats
-- Records the open and click counts of a stats computation.
UPDATE deliveries SET stats_time = %(now)s, opened_at_stats = %(opened)s,
                      clicked_at_stats = %(clicked)s
WHERE id = %(id)s;

-- name: refresh_stats
-- The scheduled refresh of Open % and Click %: from the counters, for the
-- deliveries whose figures are older than the stats interval and not final yet.
UPDATE deliveries d
SET stats_time = %(now)s, opened_at_stats = c.opened, clicked_at_stats = c.clicked
FROM (SELECT delivery_id, sum(opened)::bigint AS opened, sum(clicked)::bigint AS clicked
      FROM delivery_counters GROUP BY delivery_id) c
WHERE c.delivery_id = d.id
  AND d.state IN ({State.SENDING}, {State.SENT})
  AND (d.stats_time IS NULL OR d.stats_time <= %(now)s - %(interval)s::interval)
RETURNING d.id;

-- name: recount_domains
-- The counters of each domain rank of a delivery, recomputed from its sending and
-- tracking logs (as `recount`, from the sending logs' flags once the tracking logs are
-- pruned), as rows of (rank, to deliver, then as `recount`).
WITH pruned AS (
    SELECT events_pruned_time IS NOT NULL AS pruned FROM deliveries
    WHERE id = %(delivery_id)s
)
SELECT s.domain_rank::bigint, count(*)::bigint,
       count(*) FILTER (WHERE s.relay_time IS NOT NULL),
       count(*) FILTER (WHERE s.outcome = {Outcome.DELIVERED}),
       count(*) FILTER (WHERE s.outcome = {Outcome.SOFT_BOUNCED}),
       count(*) FILTER (WHERE s.outcome = {Outcome.HARD_BOUNCED}),
       count(*) FILTER (WHERE s.outcome = {Outcome.EXPIRED}),
       count(*) FILTER (WHERE CASE WHEN (SELECT pruned FROM pruned) THEN s.opened
                                   ELSE t.opened END),
       count(*) FILTER (WHERE CASE WHEN (SELECT pruned FROM pruned) THEN s.clicked
                                   ELSE t.clicked END),
       count(*) FILTER (WHERE CASE WHEN (SELECT pruned FROM pruned) THEN s.complained
                                   ELSE t.complained END)
FROM sending_logs s
LEFT JOIN (
    SELECT message_id, bool_or(kind IN ({EventKind.OPENED}, {EventKind.CLICKED})) AS opened,
           bool_or(kind = {EventKind.CLICKED}) AS clicked,
           bool_or(kind = {EventKind.COMPLAINT}) AS complained
    FROM feedback_events
    WHERE delivery_id = %(delivery_id)s
      AND kind IN ({EventKind.OPENED}, {EventKind.CLICKED}, {EventKind.COMPLAINT})
    GROUP BY message_id
) t ON t.message_id = s.message_id
WHERE s.delivery_id = %(delivery_id)s
GROUP BY s.domain_rank
ORDER BY s.domain_rank;

-- name: recount_failures
-- A delivery's failed messages by failure type and reason, from its sending logs.
SELECT failure_type::bigint, failure_reason::bigint, count(*)::bigint
FROM sending_logs
WHERE delivery_id = %(delivery_id)s AND status = {Status.FAILED}
GROUP BY failure_type, failure_reason
ORDER BY failure_type, failure_reason;

-- name: clear_breakdown_counters
-- Drops a delivery's domain counter shards, before they are replaced by a recount.
DELETE FROM delivery_domain_counters WHERE delivery_id = %(delivery_id)s;

-- name: clear_failure_counters
-- Drops a delivery's failure counter shards, before they are replaced by a recount.
DELETE FROM delivery_failure_counters WHERE delivery_id = %(delivery_id)s;

-- name: put_domain_counters
-- A recount's domain counters, in shard 0: one array per column, a row per rank.
INSERT INTO delivery_domain_counters (delivery_id, domain_rank, shard, to_deliver, relayed,
                                      delivered, soft_bounced, hard_bounced, expired, opened,
                                      clicked, complained)
SELECT %(delivery_id)s, c.*
FROM unnest(%(ranks)s::smallint[], %(shards)s::smallint[], %(to_deliver)s::bigint[],
            %(relayed)s::bigint[], %(delivered)s::bigint[], %(soft_bounced)s::bigint[],
            %(hard_bounced)s::bigint[], %(expired)s::bigint[], %(opened)s::bigint[],
            %(clicked)s::bigint[], %(complained)s::bigint[]) AS c;

-- name: put_failure_counters
-- A recount's failure counters, in shard 0.
INSERT INTO delivery_failure_counters (delivery_id, failure_type, failure_reason, shard,
                                       failed)
SELECT %(delivery_id)s, t, r, 0, n
FROM unnest(%(types)s::smallint[], %(reasons)s::smallint[], %(counts)s::bigint[])
     AS f (t, r, n);
