-- Each sending log counts the feedback events logged for its message: the ingest refuses
-- a new event beyond the bound per message (domain.feedback.MAX_EVENTS_PER_MESSAGE).
ALTER TABLE sending_logs ADD COLUMN events integer NOT NULL DEFAULT 0;
UPDATE sending_logs s SET events = f.n
FROM (SELECT delivery_id, message_id, count(*)::integer AS n
      FROM feedback_events GROUP BY delivery_id, message_id) f
WHERE s.delivery_id = f.delivery_id AND s.message_id = f.message_id;
