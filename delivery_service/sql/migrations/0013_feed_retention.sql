-- The event feed's retention (docs/events.md): rows are pruned in feed order, and the
-- last one pruned is remembered, so that a cursor before it is told it is out of range
-- (it would miss what was pruned) instead of silently skipping.
CREATE TABLE delivery_feed_horizon (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    xid      xid8 NOT NULL,
    seq      bigint NOT NULL,
    items    integer NOT NULL
);
