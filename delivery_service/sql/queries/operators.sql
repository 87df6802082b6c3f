-- Operators: their tokens (hashed), roles and lifecycle; and the audit trail.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: create_operator
-- Creates an operator with a hashed token, roles and an optional expiry.
INSERT INTO operators (name, token_hash, roles, expire_time)
VALUES (%(name)s, %(token_hash)s, %(roles)s, %(expire_time)s);

-- name: find_operator
-- The operator holding a token, by the token's hash, if neither revoked nor expired.
SELECT name, roles FROM operators
WHERE token_hash = %(token_hash)s AND revoke_time IS NULL
  AND (expire_time IS NULL OR expire_time > %(now)s);

-- name: get_operator
-- One operator, by name.
SELECT id, name, roles, create_time, expire_time, revoke_time FROM operators
WHERE name = %(name)s;

-- name: list_operators
-- A page of operators, oldest first.
SELECT id, name, roles, create_time, expire_time, revoke_time FROM operators
WHERE id > %(after)s
ORDER BY id
LIMIT %(limit)s;

-- name: revoke_operator
-- Revokes an operator; a revoked one keeps its first revocation time.
UPDATE operators SET revoke_time = coalesce(revoke_time, %(now)s) WHERE name = %(name)s;

-- name: rotate_operator_token
-- Gives a live operator a new token hash.
UPDATE operators SET token_hash = %(token_hash)s
WHERE name = %(name)s AND revoke_time IS NULL;

-- name: admin_exists
-- Whether a live operator holds the role admin.
SELECT 1 FROM operators
WHERE 'admin' = ANY (roles) AND revoke_time IS NULL
  AND (expire_time IS NULL OR expire_time > %(now)s)
LIMIT 1;

-- name: append_audit_event
-- Appends one call to the audit trail.
INSERT INTO audit_events (time, operator, method, target, code, request_id, peer)
VALUES (%(time)s, %(operator)s, %(method)s, %(target)s, %(code)s, %(request_id)s, %(peer)s);

-- name: list_audit_events
-- A page of the audit trail, newest first, optionally of one operator.
SELECT id, time, operator, method, target, code, request_id, peer FROM audit_events
WHERE id < %(before)s AND (%(operator)s::text = '' OR operator = %(operator)s)
ORDER BY id DESC
LIMIT %(limit)s;
