-- Where each message's events are in the event feed, for its timeline
-- (GetMessageTimeline): a feedback event keeps the transaction that logged it (its feed
-- row is that transaction's), a relay or expiry row the range of its messages. Rows
-- logged before this migration have none: their timeline is read without feed positions.
ALTER TABLE feedback_events ADD COLUMN xid xid8;
ALTER TABLE feedback_events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
ALTER TABLE delivery_feed ADD COLUMN first_message_id bigint, ADD COLUMN last_message_id bigint;
-- A message's events (its timeline), and the recounts' reads of opens, clicks and
-- complaints by message, instead of by kind.
DROP INDEX feedback_events_delivery_idx;
CREATE INDEX feedback_events_message_idx ON feedback_events (delivery_id, message_id, kind);
