-- Preparation: the analysis of a target into sending logs and dropped recipients.
-- Each query: a `-- name: <name>` line, then a one-line description.

-- name: preparation_memory
-- Preparation: its sorts in memory (1,000,000 recipients sort in 100 MB), for this
-- transaction only.
SET LOCAL work_mem = '128MB';

-- name: analyse_target
-- Preparation: resolves a target into a temporary table of recipients, each
-- with the reason it is dropped (null when it gets a message).
CREATE TEMPORARY TABLE analysis ON COMMIT DROP AS
WITH candidates AS (
    SELECT r.position, r.profile_id, coalesce(r.email, p.email) AS email,
           (r.profile_id IS NOT NULL AND p.profile_id IS NULL) AS unknown_profile
    FROM target_recipients r
    LEFT JOIN profiles p ON p.profile_id = r.profile_id
    WHERE r.target_id = %(target_id)s
    UNION ALL
    SELECT (row_number() OVER (ORDER BY p.profile_id))::integer - 1, p.profile_id, p.email, false
    FROM targets t
    JOIN profiles p ON t.segment = ANY (p.segments)
    WHERE t.id = %(target_id)s AND t.segment IS NOT NULL
),
excluded AS (
    -- What feedback (or an operator) took out of targeting: few rows, read whole.
    SELECT address, status FROM addresses
    WHERE status IN ({AddressStatus.QUARANTINED}, {AddressStatus.DENYLISTED})
),
classified AS (
    SELECT c.position, c.profile_id, c.email,
           CASE
               WHEN c.unknown_profile THEN {DropReason.UNKNOWN_PROFILE}
               WHEN c.email IS NULL OR c.email = '' THEN {DropReason.NO_ADDRESS}
               -- A label of 64 needs an address longer than 64: the second pattern,
               -- the costlier, only then.
               WHEN c.email !~ %(address_pattern)s
                    OR length(c.email) > 64
                       AND split_part(c.email, '@', 2) ~ %(long_label_pattern)s
                   THEN {DropReason.INVALID_ADDRESS}
               WHEN x.status = {AddressStatus.QUARANTINED} THEN {DropReason.QUARANTINED}
               WHEN x.status = {AddressStatus.DENYLISTED} THEN {DropReason.DENYLISTED}
               WHEN row_number() OVER (PARTITION BY lower(c.email) ORDER BY c.position) > 1
                   THEN {DropReason.DUPLICATE}
           END AS reason
    FROM candidates c
    LEFT JOIN excluded x ON x.address = lower(c.email)
)
SELECT position, profile_id, email, reason FROM classified;

-- name: analysis_statistics
-- Preparation: the analysis's statistics, for the plans of the statements that read it
-- (without them, 1,000,000 rows planned as 2,000 sorted for a merge join with ten).
ANALYZE analysis;

-- name: rank_domains
-- Preparation: the largest recipient domains of the recipients kept (by messages, then
-- name), ranked from 1; the failure breakdown's keys.
CREATE TEMPORARY TABLE ranked_domains ON COMMIT DROP AS
SELECT lower(split_part(email, '@', 2)) AS domain,
       (row_number() OVER (ORDER BY count(*) DESC, lower(split_part(email, '@', 2))))::smallint
           AS domain_rank
FROM analysis WHERE reason IS NULL
GROUP BY lower(split_part(email, '@', 2))
ORDER BY domain_rank
LIMIT %(largest)s;

-- name: queue_messages
-- Preparation: one sending log per recipient kept, in target order, with its domain's
-- rank (0: not among the largest).
INSERT INTO sending_logs (delivery_id, profile_id, email, status, domain_rank)
SELECT %(delivery_id)s, a.profile_id, a.email, {Status.QUEUED}, coalesce(r.domain_rank, 0)
FROM analysis a
LEFT JOIN ranked_domains r ON r.domain = lower(split_part(a.email, '@', 2))
WHERE a.reason IS NULL
ORDER BY a.position;

-- name: record_domains
-- Preparation: the ranked domains' names.
INSERT INTO delivery_domains (delivery_id, domain_rank, domain)
SELECT %(delivery_id)s, domain_rank, domain FROM ranked_domains;

-- name: count_domain_messages
-- Preparation: the messages to deliver of each domain rank, in shard 0 of its counters.
INSERT INTO delivery_domain_counters (delivery_id, domain_rank, shard, to_deliver)
SELECT %(delivery_id)s, domain_rank, 0, count(*)
FROM sending_logs WHERE delivery_id = %(delivery_id)s
GROUP BY domain_rank;

-- name: record_dropped
-- Preparation: the recipients dropped, and why.
INSERT INTO dropped_recipients (delivery_id, position, profile_id, email, reason)
SELECT %(delivery_id)s, position, profile_id, email, reason
FROM analysis WHERE reason IS NOT NULL;

-- name: analysis_summary
-- Preparation: how many recipients were targeted, kept, and dropped for each reason.
SELECT coalesce(reason, '') AS reason, count(*) AS n FROM analysis GROUP BY reason;

-- name: set_prepared
-- Records the analysis and moves a delivery to its state after preparation.
UPDATE deliveries
SET state = %(state)s, targeted = %(targeted)s, to_deliver = %(to_deliver)s,
    dropped = %(dropped)s
WHERE id = %(id)s;

-- name: first_dropped
-- The first dropped recipients of a delivery.
SELECT profile_id, email, reason FROM dropped_recipients
WHERE delivery_id = %(delivery_id)s ORDER BY position LIMIT %(limit)s;

-- name: drop_analysis
-- Preparation is over: its temporary tables go (they would go at commit anyway).
DROP TABLE analysis, ranked_domains;
