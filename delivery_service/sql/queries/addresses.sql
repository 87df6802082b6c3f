-- The address table: what feedback (and operators) taught of each address, and the
-- history its entries are folded from (delivery_service.domain.quarantine).
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: lock_addresses
-- Creates the entries of addresses never seen (VALID) and locks every entry named, in
-- address order, before their events are folded: a concurrent fold about the same
-- address waits, then reads what this one wrote. A locked row that exists is left as it
-- is (ON CONFLICT DO UPDATE locks even the rows its WHERE skips). The addresses come as
-- an array and as array literals (the delivery reports' of record_delivery_reports).
INSERT INTO addresses AS a (address)
SELECT DISTINCT address
FROM (SELECT unnest(%(addresses)s::text[])
      UNION ALL
      SELECT unnest(l::text[]) FROM unnest(%(address_lists)s::text[]) AS l) AS t (address)
ORDER BY address
ON CONFLICT (address) DO UPDATE SET status = a.status WHERE false;

-- name: record_delivery_reports
-- The address table's common case, set-based: a delivery report to an address whose
-- entry never changed (no update time: no event in its history changed it, so a report
-- anywhere among them changes nothing either) is recorded in its history with no entry
-- after it. The entries are locked first (lock_addresses). Returns the reports it did
-- not record, for the service to fold: those to an address whose entry has changed, or
-- that other events of the batch (`folded`) are about.
WITH checked AS (
    SELECT r.*, a.update_time IS NULL AND r.address <> ALL (%(folded)s::text[]) AS unchanged
    FROM unnest(%(addresses)s::text[], %(event_micros)s::bigint[], %(event_ids)s::text[],
                %(message_ids)s::bigint[], %(reasons)s::smallint[], %(smtp_codes)s::integer[],
                %(smtp_statuses)s::text[], %(smtp_texts)s::text[])
         AS r (address, micros, event_id, message_id, reason, smtp_code, smtp_status,
               smtp_text)
    JOIN addresses a ON a.address = r.address AND a.address = ANY (%(addresses)s::text[])
),
recorded AS (
    INSERT INTO address_events (address, event_time, delivery_id, event_id, signal,
                                message_id, failure_reason, smtp_code, smtp_status,
                                smtp_text, changed_by)
    SELECT address, timestamptz 'epoch' + micros * interval '1 microsecond',
           %(delivery_id)s, event_id, {Signal.DELIVERED}, message_id, reason, smtp_code,
           smtp_status, smtp_text, %(changed_by)s
    FROM checked
    WHERE unchanged
    ORDER BY address, micros, event_id
)
SELECT address, micros, event_id, message_id, reason, smtp_code, smtp_status, smtp_text
FROM checked
WHERE NOT unchanged;

-- name: address_states
-- The entries of addresses (locked: lock_addresses), each with the key of its latest
-- event: new events after it fold on from the entry; an earlier one folds its history
-- again. (Not a LATERAL probe per address: Citus plans no correlated subquery, and with
-- the array repeated in it, each probe would walk the whole array.)
SELECT a.address, a.status, a.error_count,
       (extract(epoch FROM a.first_error_time) * 1000000)::bigint AS first_error_time,
       (extract(epoch FROM a.last_error_time) * 1000000)::bigint AS last_error_time,
       a.failure_type, a.failure_reason, a.smtp_code, a.smtp_status, a.smtp_text,
       a.delivery_id, a.message_id,
       (extract(epoch FROM a.update_time) * 1000000)::bigint AS update_time, a.changed_by,
       (extract(epoch FROM l.event_time) * 1000000)::bigint AS latest_time,
       l.delivery_id AS latest_delivery_id, l.event_id AS latest_event_id
FROM addresses a
LEFT JOIN (
    SELECT DISTINCT ON (address) address, event_time, delivery_id, event_id
    FROM address_events
    WHERE address = ANY (%(addresses)s::text[])
    ORDER BY address, event_time DESC, delivery_id DESC, event_id DESC
) l ON l.address = a.address
WHERE a.address = ANY (%(addresses)s::text[]);

-- name: address_history
-- Every event of some addresses, in fold order, with the entry after each (null if it
-- changed nothing): where a late event's fold starts again.
SELECT address, (extract(epoch FROM event_time) * 1000000)::bigint AS event_time,
       delivery_id, event_id, signal, message_id, failure_type, failure_reason, smtp_code,
       smtp_status, smtp_text, changed_by, after::text
FROM address_events
WHERE address = ANY (%(addresses)s::text[])
ORDER BY address, event_time, delivery_id, event_id;

-- name: record_address_events
-- Appends events to address histories, each with the entry after it ('' if none).
INSERT INTO address_events (address, event_time, delivery_id, event_id, signal, message_id,
                            failure_type, failure_reason, smtp_code, smtp_status, smtp_text,
                            changed_by, after)
SELECT address, timestamptz 'epoch' + micros * interval '1 microsecond', delivery_id,
       event_id, signal, message_id, failure_type, failure_reason, smtp_code, smtp_status,
       smtp_text, changed_by, NULLIF(after, '')::jsonb
FROM unnest(%(addresses)s::text[], %(event_micros)s::bigint[], %(delivery_ids)s::bigint[],
            %(event_ids)s::text[], %(signals)s::smallint[], %(message_ids)s::bigint[],
            %(failure_types)s::smallint[], %(failure_reasons)s::smallint[],
            %(smtp_codes)s::integer[], %(smtp_statuses)s::text[], %(smtp_texts)s::text[],
            %(changed_by)s::text[], %(afters)s::text[])
     AS e (address, micros, delivery_id, event_id, signal, message_id, failure_type,
           failure_reason, smtp_code, smtp_status, smtp_text, changed_by, after)
ORDER BY address, micros, delivery_id, event_id;

-- name: refold_address_events
-- Rewrites the entry after events of a history folded again ('' if none).
UPDATE address_events e
SET after = NULLIF(x.after, '')::jsonb
FROM unnest(%(addresses)s::text[], %(event_micros)s::bigint[], %(delivery_ids)s::bigint[],
            %(event_ids)s::text[], %(afters)s::text[])
     AS x (address, micros, delivery_id, event_id, after)
WHERE e.address = x.address AND e.address = ANY (%(addresses)s::text[])
  AND e.event_time = timestamptz 'epoch' + x.micros * interval '1 microsecond'
  AND e.delivery_id = x.delivery_id AND e.event_id = x.event_id;

-- name: write_addresses
-- Writes entries as folded.
UPDATE addresses a
SET status = x.status, error_count = x.error_count,
    first_error_time = timestamptz 'epoch' + x.first_error_time * interval '1 microsecond',
    last_error_time = timestamptz 'epoch' + x.last_error_time * interval '1 microsecond',
    failure_type = x.failure_type, failure_reason = x.failure_reason,
    smtp_code = x.smtp_code, smtp_status = x.smtp_status, smtp_text = x.smtp_text,
    delivery_id = x.delivery_id, message_id = x.message_id,
    update_time = timestamptz 'epoch' + x.update_time * interval '1 microsecond',
    changed_by = x.changed_by
FROM unnest(%(addresses)s::text[], %(statuses)s::smallint[], %(error_counts)s::integer[],
            %(first_error_times)s::bigint[], %(last_error_times)s::bigint[],
            %(failure_types)s::smallint[], %(failure_reasons)s::smallint[],
            %(smtp_codes)s::integer[], %(smtp_statuses)s::text[], %(smtp_texts)s::text[],
            %(delivery_ids)s::bigint[], %(message_ids)s::bigint[],
            %(update_times)s::bigint[], %(changed_by)s::text[])
     AS x (address, status, error_count, first_error_time, last_error_time, failure_type,
           failure_reason, smtp_code, smtp_status, smtp_text, delivery_id, message_id,
           update_time, changed_by)
WHERE a.address = x.address AND a.address = ANY (%(addresses)s::text[]);

-- name: erroneous_addresses
-- The cleanup round's candidates: ERRONEOUS entries whose last counted error is older
-- than `before` (microseconds since the epoch); which are due, the domain decides.
SELECT address FROM addresses
WHERE status = {AddressStatus.ERRONEOUS}
  AND last_error_time <= timestamptz 'epoch' + %(before)s * interval '1 microsecond'
ORDER BY last_error_time
LIMIT %(limit)s;

-- name: get_address
-- One address's entry.
SELECT address, status, error_count,
       (extract(epoch FROM first_error_time) * 1000000)::bigint AS first_error_time,
       (extract(epoch FROM last_error_time) * 1000000)::bigint AS last_error_time,
       failure_type, failure_reason, smtp_code, smtp_status, smtp_text, delivery_id,
       message_id, (extract(epoch FROM update_time) * 1000000)::bigint AS update_time,
       changed_by
FROM addresses WHERE address = %(address)s;

-- name: list_addresses
-- A page of the entries that ever changed and match a filter, most recently changed
-- first (after the page token's (update time, address)). The error text is searched in
-- the reply, if there is one, as "<code> <status> <text>" and as "<code>-<status>", the
-- form a multi-line reply shows.
SELECT address, status, error_count,
       (extract(epoch FROM first_error_time) * 1000000)::bigint AS first_error_time,
       (extract(epoch FROM last_error_time) * 1000000)::bigint AS last_error_time,
       failure_type, failure_reason, smtp_code, smtp_status, smtp_text, delivery_id,
       message_id, (extract(epoch FROM update_time) * 1000000)::bigint AS update_time,
       changed_by
FROM addresses
WHERE update_time IS NOT NULL
  AND (cardinality(%(statuses)s::smallint[]) = 0 OR status = ANY (%(statuses)s::smallint[]))
  AND (%(failure_reason)s = 0 OR failure_reason = %(failure_reason)s)
  AND (%(domain)s = '' OR split_part(address, '@', 2) = %(domain)s)
  AND (%(error_text)s = ''
       OR (smtp_code <> 0 OR smtp_status <> '' OR smtp_text <> '')
          AND strpos(lower(concat_ws(' ', nullif(smtp_code, 0), nullif(smtp_status, ''),
                                     nullif(smtp_text, ''))
                           || ' ' || concat_ws('-', nullif(smtp_code, 0),
                                               nullif(smtp_status, ''))),
                     %(error_text)s) > 0)
  AND (%(changed_after)s::bigint IS NULL
       OR update_time >= timestamptz 'epoch' + %(changed_after)s * interval '1 microsecond')
  AND (%(changed_before)s::bigint IS NULL
       OR update_time < timestamptz 'epoch' + %(changed_before)s * interval '1 microsecond')
  AND (%(after_time)s::bigint IS NULL
       OR (update_time, address)
          < (timestamptz 'epoch' + %(after_time)s * interval '1 microsecond',
             %(after_address)s::text))
ORDER BY update_time DESC, address DESC
LIMIT %(limit)s;

-- name: address_history_horizon
-- The retention of the address histories: no feedback can come any more from before the
-- earliest confirmation of a delivery whose event log is kept, less the margin an
-- event's time may precede its relay. Their events older than it are past retention.
SELECT coalesce(min(confirm_time), %(now)s) - %(margin)s::interval
FROM deliveries
WHERE events_pruned_time IS NULL AND confirm_time IS NOT NULL;

-- name: address_history_work
-- The next `limit` entries after `after`, in address order, each with whether the
-- retention has something to do there: events before the horizon but the last that
-- changed the entry (where a fold starts again), or an entry the same as none (VALID,
-- unchanged since the horizon, SPEC.md: "no entry, or released") with no later event.
SELECT a.address,
       count(e.address) FILTER (WHERE e.event_time < %(horizon)s) > 1
       OR count(e.address) FILTER (WHERE e.event_time < %(horizon)s) = 1
          AND count(e.address) FILTER (WHERE e.event_time < %(horizon)s
                                       AND e.after IS NOT NULL) = 0
       OR a.status = {AddressStatus.VALID}
          AND coalesce(a.update_time < %(horizon)s, true)
          AND count(e.address) FILTER (WHERE e.event_time >= %(horizon)s) = 0 AS due
FROM (SELECT address, status, update_time FROM addresses
      WHERE address > %(after)s
      ORDER BY address
      LIMIT %(limit)s) a
LEFT JOIN address_events e ON e.address = a.address
GROUP BY a.address, a.status, a.update_time
ORDER BY a.address;

-- name: prune_address_history
-- Applies the retention to some addresses' entries and histories, locked
-- (lock_addresses): each history loses its events before the horizon but the last that
-- changed the entry; an entry the same as none goes, with all its history, when no
-- event after the horizon needs it. Returns how many events and entries went.
WITH history AS (
    SELECT address, event_time, delivery_id, event_id, after IS NOT NULL AS changed,
           event_time < %(horizon)s AS past
    FROM address_events
    WHERE address = ANY (%(addresses)s::text[])
),
baseline AS (
    SELECT DISTINCT ON (address) address, event_time, delivery_id, event_id
    FROM history
    WHERE past AND changed
    ORDER BY address, event_time DESC, delivery_id DESC, event_id DESC
),
forgotten AS (
    SELECT a.address
    FROM addresses a
    LEFT JOIN history h ON h.address = a.address AND NOT h.past
    WHERE a.address = ANY (%(addresses)s::text[]) AND a.status = {AddressStatus.VALID}
      AND coalesce(a.update_time < %(horizon)s, true) AND h.address IS NULL
),
doomed AS (
    SELECT h.address, h.event_time, h.delivery_id, h.event_id
    FROM history h
    LEFT JOIN baseline b ON b.address = h.address
    LEFT JOIN forgotten f ON f.address = h.address
    WHERE h.past
      AND (f.address IS NOT NULL OR b.address IS NULL
           OR (h.event_time, h.delivery_id, h.event_id)
              <> (b.event_time, b.delivery_id, b.event_id))
),
events_gone AS (
    DELETE FROM address_events e
    USING doomed d
    WHERE e.address = d.address AND e.address = ANY (%(addresses)s::text[])
      AND e.event_time = d.event_time AND e.delivery_id = d.delivery_id
      AND e.event_id = d.event_id
    RETURNING 1
),
entries_gone AS (
    DELETE FROM addresses a
    USING forgotten f
    WHERE a.address = f.address AND a.address = ANY (%(addresses)s::text[])
    RETURNING 1
)
SELECT (SELECT count(*) FROM events_gone), (SELECT count(*) FROM entries_gone);
