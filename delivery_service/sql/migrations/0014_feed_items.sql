-- How many items (messages, then feedback events) each row of the event feed holds,
-- stored: a page of the feed counts and slices rows by it without reading their arrays
-- (a feedback row lists up to 10,000 event ids, kept out of line).
ALTER TABLE delivery_feed
    ADD COLUMN items integer GENERATED ALWAYS AS (cardinality(message_ids)
                                                  + cardinality(event_ids)) STORED;
-- Out of line but not compressed: every row is written once and read by every consumer
-- page by page; compressing and decompressing a row's ids cost more than the disk saved.
ALTER TABLE delivery_feed ALTER COLUMN message_ids SET STORAGE EXTERNAL,
                          ALTER COLUMN event_ids SET STORAGE EXTERNAL;
