-- The benchmark's own SQL: set-up, measurements read from the database, and the
-- ceiling (workload 3). Each query starts with a `-- name: <name>` line and a
-- one-line description; bench/sql.py loads them once by name.

-- name: copy_profiles
-- Set-up: profiles straight into the table, much faster than UpsertProfiles.
COPY profiles (profile_id, email, segments) FROM STDIN;

-- name: server_version
-- The PostgreSQL version, for the record of the machine.
SELECT version() AS version, current_setting('server_version') AS server_version;

-- name: vacuum_sending_logs
-- Set-up between workloads: what autovacuum would do after a million updates, done
-- now so that no run gets it in the middle of a measure.
VACUUM (ANALYZE) sending_logs;

-- name: vacuum_feedback
-- Set-up before the ceiling, as before the ingest.
VACUUM (ANALYZE) feedback_events, delivery_counters;

-- name: count_events
-- Feedback events committed for a delivery.
SELECT count(*) AS n FROM feedback_events WHERE delivery_id = %(delivery_id)s;

-- name: fingerprint_logs
-- The state feedback gave a delivery's sending logs, as one digest: the ceiling must
-- end in exactly the state the service did.
SELECT count(*) AS n,
       md5(string_agg(concat_ws(',', message_id, status, outcome, failure_type,
                                failure_reason, opened, clicked), ';' ORDER BY message_id))
           AS digest
FROM sending_logs WHERE delivery_id = %(delivery_id)s;

-- name: fingerprint_counters
-- The sum of a delivery's counter shards.
SELECT coalesce(sum(relayed), 0)::bigint AS relayed,
       coalesce(sum(delivered), 0)::bigint AS delivered,
       coalesce(sum(soft_bounced), 0)::bigint AS soft_bounced,
       coalesce(sum(hard_bounced), 0)::bigint AS hard_bounced,
       coalesce(sum(expired), 0)::bigint AS expired,
       coalesce(sum(opened), 0)::bigint AS opened,
       coalesce(sum(clicked), 0)::bigint AS clicked
FROM delivery_counters WHERE delivery_id = %(delivery_id)s;

-- name: export_events
-- The ceiling's input: the events the service committed, in the order it committed them.
COPY (SELECT event_id, message_id, delivery_id, kind, reason, attempt, link_index, event_time
      FROM feedback_events WHERE delivery_id = %(delivery_id)s
      ORDER BY apply_time, event_id)
TO STDOUT (FORMAT binary);

-- name: reset_logs
-- Back to the state the relay left (EFS: PENDING; without EFS: SENT), before any feedback.
UPDATE sending_logs s
SET status = CASE d.feedback_mode WHEN 'EFS' THEN 2 ELSE 3 END,
    outcome = 0, failure_type = 0, failure_reason = 0, opened = false, clicked = false
FROM deliveries d
WHERE d.id = s.delivery_id AND s.delivery_id = %(delivery_id)s;

-- name: reset_events
-- Forgets the delivery's feedback events.
DELETE FROM feedback_events WHERE delivery_id = %(delivery_id)s;

-- name: reset_counters
-- Forgets the delivery's counters...
DELETE FROM delivery_counters WHERE delivery_id = %(delivery_id)s;

-- name: reset_relayed
-- ...but for the relayed count, which the relay had set.
INSERT INTO delivery_counters (delivery_id, shard, relayed)
SELECT %(delivery_id)s, 0, count(*) FROM sending_logs
WHERE delivery_id = %(delivery_id)s AND relay_time IS NOT NULL;

-- name: ceiling_staging
-- The ceiling: a staging table for the events as they arrive from the client; unlogged
-- (it is scratch space), and a real table so that every connection of the ceiling sees it.
CREATE UNLOGGED TABLE staging (
    event_id    text,
    message_id  bigint,
    delivery_id bigint,
    kind        smallint,
    reason      smallint,
    attempt     integer,
    link_index  integer,
    event_time  timestamptz
);

-- name: ceiling_drop_staging
-- The ceiling: the staging table goes once the events are applied.
DROP TABLE IF EXISTS staging;

-- name: ceiling_parts
-- The ceiling: message_id bounds that cut the staged events into equal parts.
SELECT percentile_disc(%(cuts)s::float8[]) WITHIN GROUP (ORDER BY message_id) AS bounds
FROM staging;

-- name: ceiling_copy
-- The ceiling: the events, in binary COPY format.
COPY staging FROM STDIN (FORMAT binary);

-- name: ceiling_apply
-- The ceiling: every row change of the ingest for the events of messages in
-- (after, upto], in one set-based statement, counted in one shard. Events of
-- unknown messages are dropped and an event id already logged is skipped, as the
-- service does; a message's outcome only moves up (none 0 < soft 1 < delivered 2 <
-- expired 3 < hard 4), its bounce reason is the lowest reported with that outcome;
-- status, failure type and reason follow
-- delivery_service.domain.feedback; the counters get the difference between the old
-- and the new buckets. Every CTE reads the same snapshot, so `changes` sees the rows
-- as they were before `updated` rewrites them.
WITH new_events AS (
    INSERT INTO feedback_events (event_id, message_id, delivery_id, kind, reason, attempt,
                                 link_index, event_time)
    SELECT s.event_id, s.message_id, s.delivery_id, s.kind, s.reason, s.attempt,
           s.link_index, s.event_time
    FROM staging s
    JOIN sending_logs l ON l.message_id = s.message_id AND l.delivery_id = s.delivery_id
    WHERE s.message_id > %(after)s AND s.message_id <= %(upto)s
    -- In key order: the primary key's B-tree is then filled page after page.
    ORDER BY s.event_id
    ON CONFLICT (delivery_id, event_id) DO NOTHING
    RETURNING delivery_id, message_id, kind, reason
),
per_message AS (
    SELECT delivery_id, message_id,
           max(CASE kind WHEN 3 THEN 1 WHEN 1 THEN 2 WHEN 4 THEN 3 WHEN 2 THEN 4 ELSE 0 END)
               AS rank,
           min(reason) FILTER (WHERE kind = 2) AS hard_reason,
           min(reason) FILTER (WHERE kind = 3) AS soft_reason,
           bool_or(kind IN (5, 6)) AS opened,
           bool_or(kind = 6) AS clicked
    FROM new_events
    GROUP BY delivery_id, message_id
),
folded AS (
    SELECT l.message_id, l.delivery_id, d.feedback_mode = 'EFS' AS efs,
           l.relay_time IS NOT NULL AS was_relayed,
           l.outcome AS old_outcome, greatest(l.outcome, p.rank) AS outcome,
           CASE WHEN p.rank > l.outcome AND p.rank = 4 THEN p.hard_reason
                WHEN p.rank > l.outcome AND p.rank = 1 THEN p.soft_reason
                WHEN p.rank = l.outcome AND p.rank = 4
                    THEN least(l.failure_reason, p.hard_reason)
                WHEN p.rank = l.outcome AND p.rank = 1
                    THEN least(l.failure_reason, p.soft_reason)
                ELSE l.failure_reason END AS bounce_reason,
           l.failure_reason AS old_failure_reason,
           l.opened AS old_opened, l.opened OR p.opened AS opened,
           l.clicked AS old_clicked, l.clicked OR p.clicked AS clicked
    FROM per_message p
    JOIN sending_logs l ON l.delivery_id = p.delivery_id AND l.message_id = p.message_id
    JOIN deliveries d ON d.id = l.delivery_id
),
typed AS (
    SELECT f.*,
           CASE WHEN f.outcome = 4 THEN 1
                WHEN f.outcome = 3 OR (f.outcome = 1 AND f.efs) THEN 2
                ELSE 0 END AS failure_type,
           CASE WHEN f.outcome IN (3, 4) THEN 4
                WHEN NOT f.efs THEN 3
                WHEN f.outcome = 2 THEN 3
                WHEN f.outcome = 1 THEN 4
                ELSE 2 END AS status
    FROM folded f
),
changes AS (
    SELECT t.*,
           CASE WHEN t.failure_type = 0 THEN 0
                WHEN t.outcome = 3 THEN 6
                ELSE t.bounce_reason END AS failure_reason
    FROM typed t
    WHERE NOT t.was_relayed OR t.outcome <> t.old_outcome
       OR t.opened <> t.old_opened OR t.clicked <> t.old_clicked
       OR (t.failure_type <> 0 AND t.outcome <> 3 AND t.bounce_reason <> t.old_failure_reason)
    -- In the table's order: each heap and index page is visited once, not at random.
    ORDER BY t.message_id
),
updated AS (
    UPDATE sending_logs s
    SET status = c.status, outcome = c.outcome, failure_type = c.failure_type,
        failure_reason = c.failure_reason, opened = c.opened, clicked = c.clicked,
        relay_time = coalesce(s.relay_time, now()), update_time = now()
    FROM changes c
    WHERE s.delivery_id = c.delivery_id AND s.message_id = c.message_id
    RETURNING s.message_id
),
counted AS (
    INSERT INTO delivery_counters AS k (delivery_id, shard, relayed, delivered, soft_bounced,
                                        hard_bounced, expired, opened, clicked)
    SELECT delivery_id, %(shard)s,
           count(*) FILTER (WHERE NOT was_relayed),
           count(*) FILTER (WHERE outcome = 2) - count(*) FILTER (WHERE old_outcome = 2),
           count(*) FILTER (WHERE outcome = 1) - count(*) FILTER (WHERE old_outcome = 1),
           count(*) FILTER (WHERE outcome = 4) - count(*) FILTER (WHERE old_outcome = 4),
           count(*) FILTER (WHERE outcome = 3) - count(*) FILTER (WHERE old_outcome = 3),
           count(*) FILTER (WHERE opened AND NOT old_opened),
           count(*) FILTER (WHERE clicked AND NOT old_clicked)
    FROM changes
    GROUP BY delivery_id
    ON CONFLICT (delivery_id, shard) DO UPDATE
    SET relayed = k.relayed + excluded.relayed,
        delivered = k.delivered + excluded.delivered,
        soft_bounced = k.soft_bounced + excluded.soft_bounced,
        hard_bounced = k.hard_bounced + excluded.hard_bounced,
        expired = k.expired + excluded.expired,
        opened = k.opened + excluded.opened,
        clicked = k.clicked + excluded.clicked
    RETURNING 1
)
SELECT (SELECT count(*) FROM new_events) AS events,
       (SELECT count(*) FROM updated) AS messages,
       (SELECT count(*) FROM counted) AS counter_rows;
