-- Profiles: created or replaced by callers.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: upsert_profiles
-- Creates or replaces profiles; says for each whether it was created.
INSERT INTO profiles AS p (profile_id, email, segments, update_time)
SELECT r.profile_id, NULLIF(r.email, ''), r.segments, %(now)s
FROM jsonb_to_recordset(%(profiles)s::jsonb)
     AS r (profile_id text, email text, segments text[])
ON CONFLICT (profile_id) DO UPDATE
    SET email = excluded.email,
        segments = excluded.segments,
        update_time = excluded.update_time
RETURNING (xmax = 0) AS created;

-- name: profile_exists
-- Whether a profile exists.
SELECT 1 FROM profiles WHERE profile_id = %(profile_id)s;
