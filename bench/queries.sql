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
VACUUM (ANALYZE) feedback_events, delivery_counters, delivery_domain_counters,
    delivery_failure_counters, addresses, address_events;

-- name: count_events
-- Feedback events committed for a delivery.
SELECT count(*) AS n FROM feedback_events WHERE delivery_id = %(delivery_id)s;

-- name: fingerprint_logs
-- The state feedback gave a delivery's sending logs, as one digest: the ceiling must
-- end in exactly the state the service did.
SELECT count(*) AS n,
       md5(string_agg(concat_ws(',', message_id, status, outcome, failure_type,
                                failure_reason, opened, clicked, complained, smtp_code,
                                smtp_status, smtp_text, events), ';' ORDER BY message_id))
           AS digest
FROM sending_logs WHERE delivery_id = %(delivery_id)s;

-- name: fingerprint_breakdown
-- The sums of a delivery's domain and failure counters, as one digest.
SELECT md5(coalesce((SELECT string_agg(concat_ws(',', domain_rank, to_deliver, relayed,
                                                 delivered, soft_bounced, hard_bounced,
                                                 expired, opened, clicked, complained),
                                       ';' ORDER BY domain_rank)
                     FROM (SELECT domain_rank, sum(to_deliver) AS to_deliver,
                                  sum(relayed) AS relayed, sum(delivered) AS delivered,
                                  sum(soft_bounced) AS soft_bounced,
                                  sum(hard_bounced) AS hard_bounced, sum(expired) AS expired,
                                  sum(opened) AS opened, sum(clicked) AS clicked,
                                  sum(complained) AS complained
                           FROM delivery_domain_counters WHERE delivery_id = %(delivery_id)s
                           GROUP BY domain_rank) d), '')
           || '|'
           || coalesce((SELECT string_agg(concat_ws(',', failure_type, failure_reason, n), ';'
                                          ORDER BY failure_type, failure_reason)
                        FROM (SELECT failure_type, failure_reason, sum(failed) AS n
                              FROM delivery_failure_counters
                              WHERE delivery_id = %(delivery_id)s
                              GROUP BY failure_type, failure_reason
                              HAVING sum(failed) <> 0) f), '')) AS digest;

-- name: fingerprint_addresses
-- The entries and histories of the delivery's addresses (which no other delivery
-- targets in the benchmark), as digests.
SELECT (SELECT md5(string_agg(concat_ws(',', a.address, a.status, a.error_count,
                                        a.first_error_time, a.last_error_time, a.failure_type,
                                        a.failure_reason, a.smtp_code, a.smtp_status,
                                        a.smtp_text, a.delivery_id, a.message_id,
                                        a.update_time, a.changed_by), ';' ORDER BY a.address))
        FROM addresses a
        WHERE a.address IN (SELECT lower(email) FROM sending_logs
                            WHERE delivery_id = %(delivery_id)s)) AS entries,
       (SELECT md5(string_agg(concat_ws(',', e.address, e.event_time, e.delivery_id,
                                        e.event_id, e.signal, e.message_id, e.after::text),
                              ';' ORDER BY e.address, e.event_time, e.delivery_id,
                                           e.event_id))
        FROM address_events e WHERE e.delivery_id = %(delivery_id)s) AS history;

-- name: fingerprint_counters
-- The sum of a delivery's counter shards.
SELECT coalesce(sum(relayed), 0)::bigint AS relayed,
       coalesce(sum(delivered), 0)::bigint AS delivered,
       coalesce(sum(soft_bounced), 0)::bigint AS soft_bounced,
       coalesce(sum(hard_bounced), 0)::bigint AS hard_bounced,
       coalesce(sum(expired), 0)::bigint AS expired,
       coalesce(sum(opened), 0)::bigint AS opened,
       coalesce(sum(clicked), 0)::bigint AS clicked,
       coalesce(sum(complained), 0)::bigint AS complained
FROM delivery_counters WHERE delivery_id = %(delivery_id)s;

-- name: export_events
-- The ceiling's input: the events the service committed, in the order it committed them.
COPY (SELECT event_id, message_id, delivery_id, kind, reason, attempt, link_index, event_time,
             smtp_code, smtp_status, smtp_text
      FROM feedback_events WHERE delivery_id = %(delivery_id)s
      ORDER BY apply_time, event_id)
TO STDOUT (FORMAT binary);

-- name: reset_logs
-- Back to the state the relay left (EFS: PENDING; without EFS: SENT), before any feedback.
UPDATE sending_logs s
SET status = CASE d.feedback_mode WHEN 'EFS' THEN 2 ELSE 3 END,
    outcome = 0, failure_type = 0, failure_reason = 0, opened = false, clicked = false,
    complained = false, smtp_code = 0, smtp_status = '', smtp_text = '', events = 0
FROM deliveries d
WHERE d.id = s.delivery_id AND s.delivery_id = %(delivery_id)s;

-- name: reset_events
-- Forgets the delivery's feedback events.
DELETE FROM feedback_events WHERE delivery_id = %(delivery_id)s;

-- name: reset_feed
-- Forgets the event feed's rows of the delivery's feedback (the relay's stay).
DELETE FROM delivery_feed WHERE delivery_id = %(delivery_id)s AND source = 2;

-- name: reset_counters
-- Forgets the delivery's counters...
DELETE FROM delivery_counters WHERE delivery_id = %(delivery_id)s;

-- name: reset_relayed
-- ...but for the relayed count, which the relay had set.
INSERT INTO delivery_counters (delivery_id, shard, relayed)
SELECT %(delivery_id)s, 0, count(*) FROM sending_logs
WHERE delivery_id = %(delivery_id)s AND relay_time IS NOT NULL;

-- name: reset_failures
-- Forgets the delivery's failure counters...
DELETE FROM delivery_failure_counters WHERE delivery_id = %(delivery_id)s;

-- name: reset_domains
-- ...and its domain counters...
DELETE FROM delivery_domain_counters WHERE delivery_id = %(delivery_id)s;

-- name: reset_breakdown
-- ...but for what preparation and the relay had set.
INSERT INTO delivery_domain_counters (delivery_id, domain_rank, shard, to_deliver, relayed)
SELECT %(delivery_id)s, domain_rank, 0, count(*), count(*) FILTER (WHERE relay_time IS NOT NULL)
FROM sending_logs WHERE delivery_id = %(delivery_id)s
GROUP BY domain_rank;

-- name: foreign_address_events
-- History of the delivery's addresses that other deliveries wrote: the ceiling's reset
-- forgets the delivery's addresses whole, which is right only if there is none.
SELECT count(*) AS n FROM address_events
WHERE delivery_id <> %(delivery_id)s
  AND address IN (SELECT lower(email) FROM sending_logs WHERE delivery_id = %(delivery_id)s);

-- name: reset_addresses
-- Forgets the delivery's addresses: their entries and histories.
WITH history AS (
    DELETE FROM address_events WHERE delivery_id = %(delivery_id)s
)
DELETE FROM addresses
WHERE address IN (SELECT lower(email) FROM sending_logs WHERE delivery_id = %(delivery_id)s);

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
    event_time  timestamptz,
    smtp_code   integer,
    smtp_status text,
    smtp_text   text
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
-- expired 3 < hard 4), its bounce reason and reply are the lowest (reason, text)
-- reported with that outcome; status, failure type and reason follow
-- delivery_service.domain.feedback; the counters (the delivery's, by domain rank, by
-- failure) get the difference between the old and the new buckets; each sending log
-- counts its events. Every CTE reads the same snapshot, so `changes` sees the rows as
-- they were before `updated` rewrites them. (The benchmark's events all fit the relay
-- record and none exceeds a message's bound: the checks are the ingest's cost alone.)
WITH new_events AS (
    INSERT INTO feedback_events (event_id, message_id, delivery_id, kind, reason, attempt,
                                 link_index, event_time, smtp_code, smtp_status, smtp_text)
    SELECT s.event_id, s.message_id, s.delivery_id, s.kind, s.reason, s.attempt,
           s.link_index, s.event_time, s.smtp_code, s.smtp_status, s.smtp_text
    FROM staging s
    JOIN sending_logs l ON l.message_id = s.message_id AND l.delivery_id = s.delivery_id
    WHERE s.message_id > %(after)s AND s.message_id <= %(upto)s
    -- In key order: the primary key's B-tree is then filled page after page.
    ORDER BY s.event_id
    ON CONFLICT (delivery_id, event_id) DO NOTHING
    RETURNING delivery_id, message_id, kind, reason, smtp_code, smtp_status, smtp_text,
              event_id
),
fed AS (
    -- The event feed's row of the events logged, as the ingest writes one per batch.
    INSERT INTO delivery_feed (delivery_id, source, event_ids)
    SELECT delivery_id, 2, array_agg(event_id ORDER BY event_id)
    FROM new_events
    GROUP BY delivery_id
),
per_message AS (
    SELECT delivery_id, message_id, count(*) AS new_events,
           max(CASE kind WHEN 3 THEN 1 WHEN 1 THEN 2 WHEN 4 THEN 3 WHEN 2 THEN 4 ELSE 0 END)
               AS rank,
           min(ARRAY[reason::text, smtp_text, smtp_status, smtp_code::text])
               FILTER (WHERE kind = 2) AS hard,
           min(ARRAY[reason::text, smtp_text, smtp_status, smtp_code::text])
               FILTER (WHERE kind = 3) AS soft,
           bool_or(kind IN (5, 6)) AS opened,
           bool_or(kind = 6) AS clicked,
           bool_or(kind = 7) AS complained
    FROM new_events
    GROUP BY delivery_id, message_id
),
folded AS (
    SELECT l.message_id, l.delivery_id, l.domain_rank, d.feedback_mode = 'EFS' AS efs,
           l.relay_time IS NOT NULL AS was_relayed, p.new_events,
           l.status AS old_status, l.failure_type AS old_failure_type,
           l.outcome AS old_outcome, greatest(l.outcome, p.rank) AS outcome,
           CASE WHEN p.rank > l.outcome AND p.rank = 4 THEN p.hard
                WHEN p.rank > l.outcome AND p.rank = 1 THEN p.soft
                WHEN p.rank = l.outcome AND p.rank = 4
                    THEN least(ARRAY[l.failure_reason::text, l.smtp_text, l.smtp_status,
                                     l.smtp_code::text], p.hard)
                WHEN p.rank = l.outcome AND p.rank = 1
                    THEN least(ARRAY[l.failure_reason::text, l.smtp_text, l.smtp_status,
                                     l.smtp_code::text], p.soft)
                WHEN p.rank > l.outcome THEN ARRAY['0', '', '', '0']
                ELSE ARRAY[l.failure_reason::text, l.smtp_text, l.smtp_status,
                           l.smtp_code::text] END AS bounce,
           l.failure_reason AS old_failure_reason,
           l.opened AS old_opened, l.opened OR p.opened AS opened,
           l.clicked AS old_clicked, l.clicked OR p.clicked AS clicked,
           l.complained AS old_complained, l.complained OR p.complained AS complained
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
                ELSE t.bounce[1]::smallint END AS failure_reason,
           CASE WHEN t.failure_type = 0 THEN 0 ELSE t.bounce[4]::integer END AS smtp_code,
           CASE WHEN t.failure_type = 0 THEN '' ELSE t.bounce[3] END AS smtp_status,
           CASE WHEN t.failure_type = 0 THEN '' ELSE t.bounce[2] END AS smtp_text
    FROM typed t
    -- In the table's order: each heap and index page is visited once, not at random.
    ORDER BY t.message_id
),
updated AS (
    UPDATE sending_logs s
    SET status = c.status, outcome = c.outcome, failure_type = c.failure_type,
        failure_reason = c.failure_reason, opened = c.opened, clicked = c.clicked,
        complained = c.complained, smtp_code = c.smtp_code, smtp_status = c.smtp_status,
        smtp_text = c.smtp_text, events = s.events + c.new_events,
        relay_time = coalesce(s.relay_time, now()), update_time = now()
    FROM changes c
    WHERE s.delivery_id = c.delivery_id AND s.message_id = c.message_id
    RETURNING s.message_id
),
deltas AS (
    SELECT delivery_id, domain_rank,
           count(*) FILTER (WHERE NOT was_relayed) AS relayed,
           count(*) FILTER (WHERE outcome = 2) - count(*) FILTER (WHERE old_outcome = 2)
               AS delivered,
           count(*) FILTER (WHERE outcome = 1) - count(*) FILTER (WHERE old_outcome = 1)
               AS soft_bounced,
           count(*) FILTER (WHERE outcome = 4) - count(*) FILTER (WHERE old_outcome = 4)
               AS hard_bounced,
           count(*) FILTER (WHERE outcome = 3) - count(*) FILTER (WHERE old_outcome = 3)
               AS expired,
           count(*) FILTER (WHERE opened AND NOT old_opened) AS opened,
           count(*) FILTER (WHERE clicked AND NOT old_clicked) AS clicked,
           count(*) FILTER (WHERE complained AND NOT old_complained) AS complained
    FROM changes
    GROUP BY delivery_id, domain_rank
),
counted AS (
    INSERT INTO delivery_counters AS k (delivery_id, shard, relayed, delivered, soft_bounced,
                                        hard_bounced, expired, opened, clicked, complained)
    SELECT delivery_id, %(shard)s, sum(relayed), sum(delivered), sum(soft_bounced),
           sum(hard_bounced), sum(expired), sum(opened), sum(clicked), sum(complained)
    FROM deltas
    GROUP BY delivery_id
    ON CONFLICT (delivery_id, shard) DO UPDATE
    SET relayed = k.relayed + excluded.relayed,
        delivered = k.delivered + excluded.delivered,
        soft_bounced = k.soft_bounced + excluded.soft_bounced,
        hard_bounced = k.hard_bounced + excluded.hard_bounced,
        expired = k.expired + excluded.expired,
        opened = k.opened + excluded.opened,
        clicked = k.clicked + excluded.clicked,
        complained = k.complained + excluded.complained
    RETURNING 1
),
domain_counted AS (
    INSERT INTO delivery_domain_counters AS k (delivery_id, domain_rank, shard, relayed,
                                               delivered, soft_bounced, hard_bounced, expired,
                                               opened, clicked, complained)
    SELECT delivery_id, domain_rank, %(shard)s, relayed, delivered, soft_bounced,
           hard_bounced, expired, opened, clicked, complained
    FROM deltas
    ON CONFLICT (delivery_id, domain_rank, shard) DO UPDATE
    SET relayed = k.relayed + excluded.relayed,
        delivered = k.delivered + excluded.delivered,
        soft_bounced = k.soft_bounced + excluded.soft_bounced,
        hard_bounced = k.hard_bounced + excluded.hard_bounced,
        expired = k.expired + excluded.expired,
        opened = k.opened + excluded.opened,
        clicked = k.clicked + excluded.clicked,
        complained = k.complained + excluded.complained
),
failure_counted AS (
    INSERT INTO delivery_failure_counters AS k (delivery_id, failure_type, failure_reason,
                                                shard, failed)
    SELECT f.delivery_id, f.failure_type, f.failure_reason, %(shard)s, sum(f.delta)
    FROM (
        SELECT delivery_id, old_failure_type AS failure_type,
               old_failure_reason AS failure_reason, -1 AS delta
        FROM changes WHERE old_status = 4
        UNION ALL
        SELECT delivery_id, failure_type, failure_reason, 1 FROM changes WHERE status = 4
    ) f
    GROUP BY f.delivery_id, f.failure_type, f.failure_reason
    HAVING sum(f.delta) <> 0
    ON CONFLICT (delivery_id, failure_type, failure_reason, shard) DO UPDATE
    SET failed = k.failed + excluded.failed
)
SELECT (SELECT count(*) FROM new_events) AS events,
       (SELECT count(*) FROM updated) AS messages,
       (SELECT count(*) FROM counted) AS counter_rows;

-- name: ceiling_addresses
-- The ceiling: the address table's rows for the events of messages in (after, upto],
-- set-based. In the benchmark each address gets one message (and the default rules: a
-- day between counted soft errors), so an address's fold is: its first soft bounce
-- counts (ERRONEOUS), a later delivery report releases it (VALID), a hard bounce
-- quarantines it, a complaint denylists it; each event is logged in the address's
-- history with the entry after it when it changed it.
WITH ev AS (
    SELECT lower(l.email) AS address, s.event_time, s.delivery_id, s.event_id,
           s.message_id, s.reason, s.smtp_code, s.smtp_status, s.smtp_text,
           CASE s.kind WHEN 1 THEN 1 WHEN 3 THEN 2 WHEN 2 THEN 3 ELSE 4 END AS signal,
           (extract(epoch FROM s.event_time) * 1000000)::bigint AS micros
    FROM staging s
    JOIN sending_logs l ON l.message_id = s.message_id AND l.delivery_id = s.delivery_id
    WHERE s.message_id > %(after)s AND s.message_id <= %(upto)s AND s.kind IN (1, 2, 3, 7)
),
ranked AS (
    SELECT ev.*,
           row_number() OVER (PARTITION BY address, signal
                              ORDER BY event_time, delivery_id, event_id) AS nth,
           min(micros) FILTER (WHERE signal = 2) OVER (PARTITION BY address) AS first_soft,
           min(micros) FILTER (WHERE signal = 3) OVER (PARTITION BY address) AS hard,
           -- The first soft bounce's failure, which a later delivery report leaves.
           first_value(ARRAY[reason::text, smtp_code::text, smtp_status, smtp_text])
               OVER (PARTITION BY address
                     ORDER BY signal <> 2, event_time, delivery_id, event_id
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS soft_failure
    FROM ev
),
changing AS (
    -- Each event with the entry after it, if it changed the address.
    SELECT r.*,
           CASE WHEN r.signal = 3 THEN 3
                WHEN r.signal = 4 THEN 4
                WHEN r.signal = 2 AND r.nth = 1 AND (r.hard IS NULL OR r.micros < r.hard)
                    THEN 2
                WHEN r.signal = 1 AND r.first_soft < r.micros
                     AND (r.hard IS NULL OR r.micros < r.hard) THEN 1
           END AS status_after
    FROM ranked r
),
afters AS (
    SELECT c.*,
           CASE WHEN c.status_after IS NULL THEN NULL
                ELSE jsonb_build_object(
                    'status', c.status_after,
                    'error_count', CASE c.status_after WHEN 1 THEN 0 ELSE 1 END,
                    'first_error_time', CASE WHEN c.status_after IN (2, 3) THEN c.micros END,
                    'last_error_time', CASE WHEN c.status_after IN (2, 3) THEN c.micros END,
                    'failure_type', CASE c.status_after WHEN 3 THEN 1 ELSE 2 END,
                    'failure_reason', CASE WHEN c.status_after IN (2, 3) THEN c.reason
                                           ELSE c.soft_failure[1]::integer END,
                    'smtp_code', CASE WHEN c.status_after IN (2, 3) THEN c.smtp_code
                                      ELSE c.soft_failure[2]::integer END,
                    'smtp_status', CASE WHEN c.status_after IN (2, 3) THEN c.smtp_status
                                        ELSE c.soft_failure[3] END,
                    'smtp_text', CASE WHEN c.status_after IN (2, 3) THEN c.smtp_text
                                      ELSE c.soft_failure[4] END,
                    'delivery_id', c.delivery_id, 'message_id', c.message_id,
                    'update_time', c.micros, 'changed_by', 'feedback')
           END AS after
    FROM changing c
),
history AS (
    INSERT INTO address_events (address, event_time, delivery_id, event_id, signal,
                                message_id, failure_type, failure_reason, smtp_code,
                                smtp_status, smtp_text, changed_by, after)
    SELECT address, event_time, delivery_id, event_id, signal, message_id,
           CASE signal WHEN 3 THEN 1 WHEN 2 THEN 2 ELSE 0 END, reason, smtp_code,
           smtp_status, smtp_text, 'feedback', after
    FROM afters
    ORDER BY address, event_time, delivery_id, event_id
),
entries AS (
    -- The entry after each address's last change (its latest event with an after).
    SELECT DISTINCT ON (address) address, after
    FROM afters
    ORDER BY address, (after IS NULL), event_time DESC, delivery_id DESC, event_id DESC
)
INSERT INTO addresses (address, status, error_count, first_error_time, last_error_time,
                       failure_type, failure_reason, smtp_code, smtp_status, smtp_text,
                       delivery_id, message_id, update_time, changed_by)
SELECT e.address,
       coalesce((e.after ->> 'status')::smallint, 1),
       coalesce((e.after ->> 'error_count')::integer, 0),
       timestamptz 'epoch' + (e.after ->> 'first_error_time')::bigint * interval '1 microsecond',
       timestamptz 'epoch' + (e.after ->> 'last_error_time')::bigint * interval '1 microsecond',
       coalesce((e.after ->> 'failure_type')::smallint, 0),
       coalesce((e.after ->> 'failure_reason')::smallint, 0),
       coalesce((e.after ->> 'smtp_code')::integer, 0),
       coalesce(e.after ->> 'smtp_status', ''), coalesce(e.after ->> 'smtp_text', ''),
       coalesce((e.after ->> 'delivery_id')::bigint, 0),
       coalesce((e.after ->> 'message_id')::bigint, 0),
       timestamptz 'epoch' + (e.after ->> 'update_time')::bigint * interval '1 microsecond',
       coalesce(e.after ->> 'changed_by', '')
FROM entries e
ORDER BY e.address;

-- name: soak_connections
-- The soak: sessions on the database but this one (the service's pool, the soak's own
-- short-lived connections, autovacuum workers).
SELECT count(*) AS n FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid();

-- name: soak_sizes
-- The soak: each sampled table's size with its indexes and TOAST, its indexes alone,
-- and its dead tuples (updated sending logs leave them until vacuum).
SELECT c.relname AS name, pg_total_relation_size(c.oid) AS total_bytes,
       pg_indexes_size(c.oid) AS index_bytes, coalesce(s.n_dead_tup, 0) AS dead_tuples
FROM pg_class c
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relname = ANY(%(tables)s) AND c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid);

-- name: soak_forget_profiles
-- The soak: a checked delivery's audience leaves (each delivery has profiles of its
-- own), so that what grows in the database is the service's own.
DELETE FROM profiles WHERE segments @> ARRAY[%(segment)s::text];

-- name: soak_database_size
-- The soak: the whole database on disk.
SELECT pg_database_size(current_database()) AS bytes;

-- name: soak_logs
-- The soak's check: a delivery's sending logs, and those with a final status (3 SENT,
-- 4 FAILED: delivery_service.domain's Status, which the benchmark may not import).
SELECT count(*) AS total, count(*) FILTER (WHERE status IN (3, 4)) AS final
FROM sending_logs WHERE delivery_id = %(delivery_id)s;

-- name: soak_history
-- The soak's check: a delivery's delivery reports logged (kind 1 DELIVERED), and the
-- address history it wrote (signals: 1 delivered, 2 soft error, 3 hard error; each
-- delivery has addresses of its own, so its addresses are those of its events).
SELECT (SELECT count(*) FROM feedback_events
        WHERE delivery_id = %(delivery_id)s AND kind = 1) AS delivered_events,
       count(*) FILTER (WHERE signal = 1) AS signal_delivered,
       count(*) FILTER (WHERE signal = 3) AS signal_hard,
       count(DISTINCT address) FILTER (WHERE signal = 2) AS soft_addresses,
       count(*) FILTER (WHERE signal = 2 AND after IS NOT NULL) AS soft_changed,
       (SELECT count(*) FROM addresses
        WHERE delivery_id = %(delivery_id)s AND status = 3) AS addresses_quarantined
FROM address_events WHERE delivery_id = %(delivery_id)s;

-- name: prepare_ceiling_delivery
-- The preparation ceiling: a DRAFT copy of a prepared delivery, to prepare again.
INSERT INTO deliveries (label, subject, body, links, target_id, feedback_mode,
                        validity_period, required_approvals, state)
SELECT label || ' (ceiling)', subject, body, links, target_id, feedback_mode,
       validity_period, required_approvals, 'DRAFT'
FROM deliveries WHERE id = %(delivery_id)s
RETURNING id;

-- name: prepare_ceiling
-- The preparation ceiling: a target's analysis (a recipient list's, or a segment's: the
-- other is empty) into the same rows as PrepareDelivery
-- (sending logs in target order with their domain's rank, the largest domains and
-- their messages, the dropped recipients with their reason, the delivery's counts), in
-- one plain statement: each recipient classified once (address rules, quarantined or
-- denylisted, duplicates), the kept ones inserted straight from it, no temporary table.
-- Statuses: 1 QUEUED; addresses 3 QUARANTINED, 4 DENYLISTED (delivery_service.domain).
WITH classified AS MATERIALIZED (
    SELECT c.position, c.profile_id, c.email, lower(split_part(c.email, '@', 2)) AS domain,
           CASE
               WHEN c.unknown_profile THEN 'UNKNOWN_PROFILE'
               WHEN c.email IS NULL OR c.email = '' THEN 'NO_ADDRESS'
               WHEN c.email !~ %(address_pattern)s
                    OR length(c.email) > 64
                       AND split_part(c.email, '@', 2) ~ %(long_label_pattern)s
                   THEN 'INVALID_ADDRESS'
               WHEN x.status = 3 THEN 'QUARANTINED'
               WHEN x.status = 4 THEN 'DENYLISTED'
               WHEN row_number() OVER (PARTITION BY lower(c.email) ORDER BY c.position) > 1
                   THEN 'DUPLICATE'
           END AS reason
    FROM (SELECT r.position, r.profile_id, coalesce(r.email, p.email) AS email,
                 r.profile_id IS NOT NULL AND p.profile_id IS NULL AS unknown_profile
          FROM target_recipients r
          LEFT JOIN profiles p ON p.profile_id = r.profile_id
          WHERE r.target_id = %(target_id)s
          UNION ALL
          SELECT (row_number() OVER (ORDER BY p.profile_id))::integer - 1, p.profile_id,
                 p.email, false
          FROM profiles p
          WHERE p.segments @> ARRAY[%(segment)s::text]) c
    LEFT JOIN addresses x ON x.address = lower(c.email) AND x.status IN (3, 4)
),
ranked AS MATERIALIZED (
    SELECT domain, (row_number() OVER (ORDER BY count(*) DESC, domain))::smallint AS domain_rank
    FROM classified
    WHERE reason IS NULL
    GROUP BY domain
    ORDER BY domain_rank
    LIMIT %(largest)s
),
queued AS (
    INSERT INTO sending_logs (delivery_id, profile_id, email, status, domain_rank)
    SELECT %(delivery_id)s, c.profile_id, c.email, 1, coalesce(r.domain_rank, 0)
    FROM classified c
    LEFT JOIN ranked r ON r.domain = c.domain
    WHERE c.reason IS NULL
    ORDER BY c.position
    RETURNING domain_rank
),
domains AS (
    INSERT INTO delivery_domains (delivery_id, domain_rank, domain)
    SELECT %(delivery_id)s, domain_rank, domain FROM ranked
),
counted AS (
    INSERT INTO delivery_domain_counters (delivery_id, domain_rank, shard, to_deliver)
    SELECT %(delivery_id)s, domain_rank, 0, count(*) FROM queued GROUP BY domain_rank
),
dropped AS (
    INSERT INTO dropped_recipients (delivery_id, position, profile_id, email, reason)
    SELECT %(delivery_id)s, position, profile_id, email, reason
    FROM classified
    WHERE reason IS NOT NULL
),
summary AS (
    SELECT count(*) AS targeted, count(*) FILTER (WHERE reason IS NULL) AS to_deliver
    FROM classified
)
UPDATE deliveries d
SET state = 'APPROVED', targeted = s.targeted, to_deliver = s.to_deliver,
    dropped = s.targeted - s.to_deliver
FROM summary s
WHERE d.id = %(delivery_id)s
RETURNING d.to_deliver;

-- name: fingerprint_preparation
-- The preparation ceiling's check: what a preparation wrote, in target order.
SELECT (SELECT count(*) || ':' || md5(string_agg(concat_ws('|', profile_id, email, status,
                                                           domain_rank), ','
                                                 ORDER BY message_id))
        FROM sending_logs WHERE delivery_id = %(delivery_id)s),
       (SELECT string_agg(domain_rank || ':' || domain, ',' ORDER BY domain_rank)
        FROM delivery_domains WHERE delivery_id = %(delivery_id)s),
       (SELECT string_agg(domain_rank || ':' || total, ',' ORDER BY domain_rank)
        FROM (SELECT domain_rank, sum(to_deliver) AS total FROM delivery_domain_counters
              WHERE delivery_id = %(delivery_id)s GROUP BY domain_rank) t),
       (SELECT count(*) || ':' || coalesce(md5(string_agg(concat_ws('|', position,
                                                                    profile_id, email,
                                                                    reason), ','
                                                          ORDER BY position)), '')
        FROM dropped_recipients WHERE delivery_id = %(delivery_id)s),
       (SELECT concat_ws('|', state, targeted, to_deliver, dropped)
        FROM deliveries WHERE id = %(delivery_id)s);

-- name: forget_delivery
-- A delivery the benchmark measured the preparation of goes once checked, with its
-- sending logs (its other rows by their foreign keys): the workloads after it see only
-- the benchmark's deliveries.
WITH logs AS (DELETE FROM sending_logs WHERE delivery_id = %(delivery_id)s)
DELETE FROM deliveries WHERE id = %(delivery_id)s;

-- name: forget_target
-- The recipient list the benchmark made, once its delivery is gone.
DELETE FROM targets WHERE id = %(target_id)s;

-- name: delivery_target
-- A delivery's target: its id and segment (null for a recipient list).
SELECT t.id, t.segment FROM deliveries d JOIN targets t ON t.id = d.target_id
WHERE d.id = %(delivery_id)s;
