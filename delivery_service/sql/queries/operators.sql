-- Operators: their tokens (hashed) and roles.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: create_operator
-- Creates an operator with a hashed token and roles.
INSERT INTO operators (name, token_hash, roles)
VALUES (%(name)s, %(token_hash)s, %(roles)s);

-- name: find_operator
-- The operator holding a token, by the token's hash.
SELECT name, roles FROM operators WHERE token_hash = %(token_hash)s;
