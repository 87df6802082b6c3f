-- Delivery alerts: the deliveries the alerts round checks, the alerts it raises, and
-- listings. Each query: a `-- name: <name>` line, then a one-line description.

-- name: live_deliveries
-- The alerts round: the deliveries being sent or sent, with when their send was
-- confirmed.
SELECT id, confirm_time FROM deliveries
WHERE state IN ({State.SENDING}, {State.SENT})
ORDER BY id;

-- name: raise_alerts
-- Raises a delivery's alerts, each at most once per criterion and day, except that an
-- alert raised earlier the same day learns of a stop it led to (its value and message
-- become the stop's); returns the criteria raised or told of the stop now.
INSERT INTO delivery_alerts (delivery_id, criterion, raise_day, raise_time, value, threshold,
                             message, stopped)
SELECT %(delivery_id)s, criterion, (%(now)s::timestamptz AT TIME ZONE 'UTC')::date, %(now)s,
       value, threshold, message, stopped
FROM unnest(%(criteria)s::smallint[], %(values)s::double precision[],
            %(thresholds)s::double precision[], %(messages)s::text[], %(stopped)s::boolean[])
     AS a (criterion, value, threshold, message, stopped)
ON CONFLICT (delivery_id, criterion, raise_day) DO UPDATE
SET value = excluded.value, message = excluded.message, stopped = true
WHERE excluded.stopped AND NOT delivery_alerts.stopped
RETURNING criterion;

-- name: list_delivery_alerts
-- A page of one delivery's alerts, newest first, after the page token's.
SELECT delivery_id, criterion, raise_time, value, threshold, message, stopped
FROM delivery_alerts
WHERE delivery_id = %(delivery_id)s
  AND (%(after_time)s::timestamptz IS NULL
       OR (raise_time, criterion) < (%(after_time)s, %(after_criterion)s::smallint))
ORDER BY raise_time DESC, criterion DESC
LIMIT %(limit)s;

-- name: list_all_alerts
-- A page of every delivery's alerts, newest first, after the page token's.
SELECT delivery_id, criterion, raise_time, value, threshold, message, stopped
FROM delivery_alerts
WHERE %(after_time)s::timestamptz IS NULL
   OR (raise_time, delivery_id, criterion)
      < (%(after_time)s, %(after_delivery)s::bigint, %(after_criterion)s::smallint)
ORDER BY raise_time DESC, delivery_id DESC, criterion DESC
LIMIT %(limit)s;
