-- Feedback ingest: a delivery's events folded into its sending logs and counters.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: plan_by_key
-- For the rest of the ingest's transaction: no sequential scan. Every statement of it
-- reads by key, in proportion to the batch; but the tables grow faster during an
-- ingest than their statistics follow, and with stale ones the planner read the whole
-- delivery's sending logs, or every address, for each batch (a cost growing with the
-- delivery: 0.13 s a batch at 200,000 messages).
SET LOCAL enable_seqscan = off;

-- name: lock_feedback_messages
-- Locks a delivery's messages that a batch of feedback is about, in id order, before
-- the batch is applied in the same transaction: a concurrent batch about the same
-- message waits, then reads what this one wrote. A statement of its own: Citus takes
-- no row lock inside a CTE (docs/scaling.md).
SELECT message_id FROM sending_logs
WHERE delivery_id = %(delivery_id)s AND message_id = ANY (%(message_ids)s::bigint[])
ORDER BY message_id
FOR NO KEY UPDATE;

-- name: apply_feedback
-- Applies a batch of one delivery's feedback events in one set-based statement, its
-- messages locked first (lock_feedback_messages): every event of a known message is
-- logged once (an event id already logged is skipped), each
-- message touched is folded and rewritten once, and the counter deltas go to one
-- shard. The rules are delivery_service.domain.feedback's, for whole sets: a
-- message's outcome (0 none, 1 soft bounced, 2 delivered, 3 expired, 4 hard
-- bounced) only moves up, to the highest one reported; the bounce reason is the
-- lowest one reported with that outcome; the status, failure type and failure
-- reason of each (mode, outcome) come from tables store.py builds from the domain
-- functions; a FINISHED delivery's fates no longer change, though opens and clicks
-- still count. An event is believed only if it fits the relay record (`refusal`): its
-- delivery is SENDING, SENT or FINISHED and its event log not pruned by the retention
-- (the ids that recognise a duplicate are gone), its message was relayed, its time is within
-- [relay time - 5 min, now + 5 min] (now: the latest time the service's clock read,
-- which a backward step of the clock does not take back), a click names a link the
-- content has, and an open or a click is about a delivered message (or one this batch reports delivered), and its
-- message has fewer than max_events events logged (counted on the sending log). A
-- refused event is neither logged nor applied; refusals that time may mend (not
-- relayed yet, not delivered yet) are `deferred` unless `final`. Every reference to a per-delivery table is filtered by the delivery
-- (one shard on Citus). No two CTEs are joined with each other: each join has a table
-- on one side, so that no plan can turn quadratic in the batch's size.
WITH checked AS (
    SELECT e.*, s.events AS logged_events,
           CASE
               WHEN d.state NOT IN ({State.SENDING}, {State.SENT}, {State.FINISHED})
                   THEN 'delivery_state'
               WHEN d.events_pruned_time IS NOT NULL THEN 'past_retention'
               WHEN s.relay_time IS NULL THEN 'not_relayed'
               WHEN e.event_micros < %(relay_margin)s
                                     + (extract(epoch FROM s.relay_time) * 1000000)::bigint
                 OR e.event_micros > %(now_micros)s + %(future_margin)s
                   THEN 'event_time'
               WHEN (%(clicks)s::boolean[])[e.kind]
                    AND NOT e.link_index BETWEEN 0 AND cardinality(d.links) - 1
                   THEN 'link_index'
               WHEN (%(after_delivery)s::boolean[])[e.kind] AND NOT e.delivered_in_batch
                    AND NOT (%(engageable)s::boolean[])
                            [(d.feedback_mode = {FeedbackMode.EFS})::integer + 1][s.outcome + 1]
                   THEN 'not_delivered'
           END AS first_refusal
    FROM unnest(%(event_ids)s::text[], %(message_ids)s::bigint[], %(kinds)s::smallint[],
                %(reasons)s::smallint[], %(attempts)s::integer[],
                %(link_indexes)s::integer[], %(event_micros)s::bigint[],
                %(delivered_in_batch)s::boolean[], %(in_batch)s::integer[],
                %(smtp_codes)s::integer[], %(smtp_statuses)s::text[], %(smtp_texts)s::text[])
         AS e (event_id, message_id, kind, reason, attempt, link_index, event_micros,
               delivered_in_batch, in_batch, smtp_code, smtp_status, smtp_text)
    -- Each event's message looked up by key, one probe each (a subquery with a LIMIT is
    -- never made a join): the planner would otherwise hash the whole delivery's sending
    -- logs for every batch, a cost that grows with the delivery, not the batch. An event
    -- id already logged needs no probe here: the insert skips it (ON CONFLICT).
    CROSS JOIN LATERAL (
        SELECT s.events, s.relay_time, s.outcome FROM sending_logs s
        WHERE s.delivery_id = %(delivery_id)s AND s.message_id = e.message_id
        LIMIT 1
    ) s
    JOIN deliveries d ON d.id = %(delivery_id)s
),
known AS (
    -- At most max_events logged per message: a new event beyond them is refused, counted
    -- in id order among the batch's new (not yet logged), otherwise believed events of
    -- its message. Only where the message's logged events and all of its events in the
    -- batch (in_batch) could pass the bound is that count taken, and are the events
    -- already logged looked for: nearly always, neither.
    SELECT c.*, c.first_refusal AS refusal
    FROM checked c
    WHERE c.first_refusal IS NOT NULL OR c.logged_events + c.in_batch <= %(max_events)s
    UNION ALL
    SELECT c.*,
           CASE WHEN f.logged IS NULL
                     AND c.logged_events
                         + count(*) FILTER (WHERE f.logged IS NULL)
                               OVER (PARTITION BY c.message_id ORDER BY c.event_id
                                     ROWS UNBOUNDED PRECEDING) > %(max_events)s
                THEN 'events_per_message' END
    FROM checked c
    LEFT JOIN LATERAL (
        SELECT true AS logged FROM feedback_events f
        WHERE f.delivery_id = %(delivery_id)s AND f.event_id = c.event_id
        LIMIT 1
    ) f ON true
    WHERE c.first_refusal IS NULL AND c.logged_events + c.in_batch > %(max_events)s
),
new_events AS (
    INSERT INTO feedback_events (event_id, message_id, delivery_id, kind, reason, attempt,
                                 link_index, event_time, smtp_code, smtp_status, smtp_text)
    SELECT event_id, message_id, %(delivery_id)s, kind, reason, attempt, link_index,
           timestamptz 'epoch' + event_micros * interval '1 microsecond',
           -- Callers without replies may send no reply arrays at all.
           coalesce(smtp_code, 0), coalesce(smtp_status, ''), coalesce(smtp_text, '')
    FROM known
    WHERE refusal IS NULL
    -- In key order: concurrent batches wait on a shared id in the same order.
    ORDER BY event_id
    ON CONFLICT (delivery_id, event_id) DO NOTHING
    RETURNING event_id, message_id, kind, reason, event_time, smtp_code, smtp_status,
              smtp_text
),
per_message AS (
    SELECT n.message_id, count(*) AS new_events,
           max(o.outcome) AS outcome,
           (array_agg(n.reason ORDER BY o.outcome DESC, n.reason, n.smtp_text))[1] AS reason,
           -- The reply of the event that decides: the same order as the reason's.
           (array_agg(ARRAY[n.smtp_code::text, n.smtp_status, n.smtp_text]
                      ORDER BY o.outcome DESC, n.reason, n.smtp_text))[1:1] AS reply,
           bool_or((%(opens)s::boolean[])[n.kind]) AS opened,
           bool_or((%(clicks)s::boolean[])[n.kind]) AS clicked,
           bool_or(n.kind = {EventKind.COMPLAINT}) AS complained
    FROM new_events n
    JOIN deliveries d ON d.id = %(delivery_id)s
    -- A fate reported after the end of the validity changes nothing (it is read as no
    -- fate); opens, clicks and complaints still count.
    CROSS JOIN LATERAL (
        SELECT CASE WHEN d.state = {State.FINISHED} THEN {Outcome.NONE}
                    ELSE (%(outcome_of_kind)s::smallint[])[n.kind] END AS outcome
    ) o
    GROUP BY n.message_id
),
current AS (
    -- The messages with what their new events report, as the batches before this one
    -- left them (they are locked: lock_feedback_messages).
    SELECT l.message_id, l.relay_time IS NOT NULL AS was_relayed, l.domain_rank,
           p.new_events,
           l.status AS old_status, l.failure_type AS old_failure_type,
           l.outcome, l.failure_reason, l.opened, l.clicked, l.complained,
           l.smtp_code, l.smtp_status, l.smtp_text,
           p.outcome AS reported, p.reason AS reported_reason,
           p.reply[1][1]::integer AS reported_code, p.reply[1][2] AS reported_status,
           p.reply[1][3] AS reported_text,
           p.opened AS reported_open, p.clicked AS reported_click,
           p.complained AS reported_complaint
    FROM per_message p
    JOIN sending_logs l ON l.delivery_id = %(delivery_id)s AND l.message_id = p.message_id
),
folded AS (
    SELECT c.message_id, c.was_relayed, c.domain_rank, c.old_status, c.old_failure_type,
           c.new_events,
           -- The rule tables' first index: 1 without EFS, 2 with it.
           (d.feedback_mode = {FeedbackMode.EFS})::integer + 1 AS mode,
           c.outcome AS old_outcome, greatest(c.outcome, c.reported) AS outcome,
           CASE WHEN c.reported > c.outcome THEN c.reported_reason
                WHEN c.reported = c.outcome THEN least(c.failure_reason, c.reported_reason)
                ELSE c.failure_reason END AS bounce_reason,
           -- The reply kept is the one of the lowest (reason, text) at the highest outcome:
           -- the same whatever order the bounces arrived in.
           (c.reported > c.outcome
            OR c.reported = c.outcome
               AND (c.reported_reason, c.reported_text) < (c.failure_reason, c.smtp_text))
               AS new_reply,
           c.failure_reason AS old_failure_reason,
           c.opened AS old_opened, c.opened OR c.reported_open AS opened,
           c.clicked AS old_clicked, c.clicked OR c.reported_click AS clicked,
           c.complained AS old_complained, c.complained OR c.reported_complaint AS complained,
           c.smtp_code AS old_smtp_code, c.smtp_status AS old_smtp_status,
           c.smtp_text AS old_smtp_text,
           c.reported_code, c.reported_status, c.reported_text
    FROM current c
    JOIN deliveries d ON d.id = %(delivery_id)s
),
changes AS (
    -- Every message with new events: those whose state changed, and those whose count of
    -- logged events only grew.
    SELECT r.*, x.changed FROM (
        SELECT f.*,
               (%(statuses)s::smallint[])[f.mode][f.outcome + 1] AS status,
               (%(failure_types)s::smallint[])[f.mode][f.outcome + 1] AS failure_type,
               coalesce((%(failure_reasons)s::smallint[])[f.mode][f.outcome + 1],
                        f.bounce_reason) AS failure_reason,
               -- A reply is kept only while the message has a failure type: without
               -- EFS a soft bounce is no failure, and an expiry keeps none.
               CASE WHEN f.failed AND f.new_reply THEN f.reported_code
                    WHEN f.failed THEN f.old_smtp_code ELSE 0 END AS smtp_code,
               CASE WHEN f.failed AND f.new_reply THEN f.reported_status
                    WHEN f.failed THEN f.old_smtp_status ELSE '' END AS smtp_status,
               CASE WHEN f.failed AND f.new_reply THEN f.reported_text
                    WHEN f.failed THEN f.old_smtp_text ELSE '' END AS smtp_text
        FROM (SELECT *, (%(failure_types)s::smallint[])[mode][outcome + 1]
                        <> {FailureType.NONE} AS failed
              FROM folded) f
    ) r
    CROSS JOIN LATERAL (
        SELECT NOT r.was_relayed OR r.outcome <> r.old_outcome
               OR r.failure_reason <> r.old_failure_reason
               OR r.opened <> r.old_opened OR r.clicked <> r.old_clicked
               OR r.complained <> r.old_complained OR r.smtp_text <> r.old_smtp_text
               OR r.smtp_status <> r.old_smtp_status OR r.smtp_code <> r.old_smtp_code
               AS changed
    ) x
),
updated AS (
    UPDATE sending_logs s
    SET status = c.status, outcome = c.outcome, failure_type = c.failure_type,
        failure_reason = c.failure_reason, opened = c.opened, clicked = c.clicked,
        complained = c.complained, smtp_code = c.smtp_code, smtp_status = c.smtp_status,
        smtp_text = c.smtp_text, relay_time = coalesce(s.relay_time, %(now)s),
        update_time = CASE WHEN c.changed THEN %(now)s ELSE s.update_time END,
        events = s.events + c.new_events
    FROM changes c
    WHERE s.delivery_id = %(delivery_id)s AND s.message_id = c.message_id
),
deltas AS (
    -- The counter changes, by domain rank: summed for the delivery's counters, as they
    -- are for its domains'.
    SELECT domain_rank,
           count(*) FILTER (WHERE NOT was_relayed) AS relayed,
           count(*) FILTER (WHERE outcome = {Outcome.DELIVERED})
               - count(*) FILTER (WHERE old_outcome = {Outcome.DELIVERED}) AS delivered,
           count(*) FILTER (WHERE outcome = {Outcome.SOFT_BOUNCED})
               - count(*) FILTER (WHERE old_outcome = {Outcome.SOFT_BOUNCED}) AS soft_bounced,
           count(*) FILTER (WHERE outcome = {Outcome.HARD_BOUNCED})
               - count(*) FILTER (WHERE old_outcome = {Outcome.HARD_BOUNCED}) AS hard_bounced,
           count(*) FILTER (WHERE outcome = {Outcome.EXPIRED})
               - count(*) FILTER (WHERE old_outcome = {Outcome.EXPIRED}) AS expired,
           count(*) FILTER (WHERE opened AND NOT old_opened) AS opened,
           count(*) FILTER (WHERE clicked AND NOT old_clicked) AS clicked,
           count(*) FILTER (WHERE complained AND NOT old_complained) AS complained
    FROM changes
    GROUP BY domain_rank
),
counted AS (
    INSERT INTO delivery_counters AS k (delivery_id, shard, relayed, delivered, soft_bounced,
                                        hard_bounced, expired, opened, clicked, complained)
    SELECT %(delivery_id)s, %(shard)s, sum(relayed), sum(delivered), sum(soft_bounced),
           sum(hard_bounced), sum(expired), sum(opened), sum(clicked), sum(complained)
    FROM deltas
    HAVING count(*) > 0
    ON CONFLICT (delivery_id, shard) DO UPDATE
    SET relayed = k.relayed + excluded.relayed,
        delivered = k.delivered + excluded.delivered,
        soft_bounced = k.soft_bounced + excluded.soft_bounced,
        hard_bounced = k.hard_bounced + excluded.hard_bounced,
        expired = k.expired + excluded.expired,
        opened = k.opened + excluded.opened,
        clicked = k.clicked + excluded.clicked,
        complained = k.complained + excluded.complained
),
domain_counted AS (
    INSERT INTO delivery_domain_counters AS k (delivery_id, domain_rank, shard, relayed,
                                               delivered, soft_bounced, hard_bounced, expired,
                                               opened, clicked, complained)
    SELECT %(delivery_id)s, domain_rank, %(shard)s, relayed, delivered, soft_bounced,
           hard_bounced, expired, opened, clicked, complained
    FROM deltas
    -- In key order, as every writer of these rows: no two transactions wait on each
    -- other's new rows.
    ORDER BY domain_rank
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
fed AS (
    -- The event feed's row (docs/events.md): the events this batch logged.
    INSERT INTO delivery_feed (delivery_id, source, event_ids)
    SELECT %(delivery_id)s, {FeedSource.FEEDBACK}, array_agg(event_id ORDER BY event_id)
    FROM new_events
    HAVING count(*) > 0
),
failure_counted AS (
    -- Failed messages by failure type and reason: each message that leaves a
    -- (type, reason) counts -1 there, each that comes +1.
    INSERT INTO delivery_failure_counters AS k (delivery_id, failure_type, failure_reason,
                                                shard, failed)
    SELECT %(delivery_id)s, f.failure_type, f.failure_reason, %(shard)s, sum(f.delta)
    FROM (
        SELECT old_failure_type AS failure_type, old_failure_reason AS failure_reason,
               -1 AS delta
        FROM changes WHERE old_status = {Status.FAILED}
        UNION ALL
        SELECT failure_type, failure_reason, 1 FROM changes WHERE status = {Status.FAILED}
    ) f
    GROUP BY f.failure_type, f.failure_reason
    HAVING sum(f.delta) <> 0
    ORDER BY f.failure_type, f.failure_reason
    ON CONFLICT (delivery_id, failure_type, failure_reason, shard) DO UPDATE
    SET failed = k.failed + excluded.failed
)
SELECT (SELECT count(*) FROM known) AS known, (SELECT count(*) FROM new_events) AS applied,
       (SELECT coalesce(array_agg(refusal), '{}') FROM known WHERE refusal IS NOT NULL)
           AS refusals,
       a.*
FROM (
    -- The new events that speak of their address, with it (lower-cased), for the address
    -- table: delivery reports (report_kinds) apart and as array literals, which the service passes on
    -- untouched to record_delivery_reports (the address table's common case: nothing
    -- changes; in store.addresses.DeliveryReports' order), the others as arrays, which it folds (delivery_service.domain.quarantine).
    SELECT coalesce(array_agg(lower(s.email)) FILTER (WHERE NOT r.report), '{}') AS emails,
           coalesce(array_agg(n.event_id) FILTER (WHERE NOT r.report), '{}') AS event_ids,
           coalesce(array_agg(n.message_id) FILTER (WHERE NOT r.report), '{}') AS message_ids,
           coalesce(array_agg(n.kind) FILTER (WHERE NOT r.report), '{}') AS kinds,
           coalesce(array_agg(n.reason) FILTER (WHERE NOT r.report), '{}') AS reasons,
           coalesce(array_agg(r.micros) FILTER (WHERE NOT r.report), '{}') AS event_micros,
           coalesce(array_agg(n.smtp_code) FILTER (WHERE NOT r.report), '{}') AS smtp_codes,
           coalesce(array_agg(n.smtp_status) FILTER (WHERE NOT r.report), '{}')
               AS smtp_statuses,
           coalesce(array_agg(n.smtp_text) FILTER (WHERE NOT r.report), '{}') AS smtp_texts,
           count(*) FILTER (WHERE r.report) AS reports,
           (array_agg(lower(s.email)) FILTER (WHERE r.report))::text AS report_addresses,
           (array_agg(r.micros) FILTER (WHERE r.report))::text AS report_micros,
           (array_agg(n.event_id) FILTER (WHERE r.report))::text AS report_event_ids,
           (array_agg(n.message_id) FILTER (WHERE r.report))::text AS report_message_ids,
           (array_agg(n.reason) FILTER (WHERE r.report))::text AS report_reasons,
           (array_agg(n.smtp_code) FILTER (WHERE r.report))::text AS report_smtp_codes,
           (array_agg(n.smtp_status) FILTER (WHERE r.report))::text AS report_smtp_statuses,
           (array_agg(n.smtp_text) FILTER (WHERE r.report))::text AS report_smtp_texts
    FROM new_events n
    JOIN sending_logs s ON s.delivery_id = %(delivery_id)s AND s.message_id = n.message_id
    CROSS JOIN LATERAL (
        SELECT (%(report_kinds)s::boolean[])[n.kind] AS report,
               (extract(epoch FROM n.event_time) * 1000000)::bigint AS micros
    ) r
    WHERE (%(address_kinds)s::boolean[])[n.kind]
) a;
