-- The feedback event log's retention (docs/events.md): once a finished delivery is past
-- its retention and its rows of the event feed are pruned, its feedback events go too.
-- From then on feedback about it is refused (past_retention): the event ids that would
-- recognise a duplicate are gone, and ComputeStats counts its opens, clicks and
-- complaints from the sending logs' flags instead of the tracking logs.
ALTER TABLE deliveries ADD COLUMN events_pruned_time timestamptz;
