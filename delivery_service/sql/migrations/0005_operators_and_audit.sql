-- Operators with a lifecycle (an optional expiry, revocation), and the audit trail:
-- every state-changing call, appended, never updated.

ALTER TABLE operators ADD COLUMN expire_time timestamptz;
ALTER TABLE operators ADD COLUMN revoke_time timestamptz;

CREATE TABLE audit_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time       timestamptz NOT NULL,
    operator   text NOT NULL,
    method     text NOT NULL,
    target     text NOT NULL,
    code       text NOT NULL,
    request_id text NOT NULL,
    peer       text NOT NULL
);
CREATE INDEX audit_events_operator_idx ON audit_events (operator, id);
