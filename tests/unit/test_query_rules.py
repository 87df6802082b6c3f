"""The static check of every named query against docs/scaling.md's rules, and the check
itself: it passes on today's queries and catches each class of problem that Citus
refused in the queries before the change (quoted from them below)."""

from __future__ import annotations

import pytest

from delivery_service.store.connection import QUERIES
from tests.support.citus_rules import query_problems


def test_every_named_query_follows_the_rules() -> None:
    problems = [p for name, sql in QUERIES.items() for p in query_problems(name, sql.decode())]
    assert problems == []


# The queries as they were before the change (6c08ac3), each refused by Citus.
BEFORE = {
    "set_confirmed": (
        """UPDATE deliveries
        SET state = 'SENDING', confirm_time = now(), confirmed_by = %(operator)s,
            validity_end_time = now() + validity_period
        WHERE id = %(id)s""",
        "a now()-like function with a column in UPDATE SET",
    ),
    "advance_recurring": (
        """UPDATE recurring_deliveries
        SET occurrences = occurrences + 1,
            next_occurrence_time = next_occurrence_time + occurrence_interval * (1 + floor(
                extract(epoch FROM now() - next_occurrence_time)
                / extract(epoch FROM occurrence_interval)))
        WHERE id = %(id)s""",
        "a now()-like function with a column in UPDATE SET",
    ),
    "update_messages": (
        """UPDATE sending_logs s
        SET status = v.status, outcome = v.outcome, failure_type = v.failure_type,
            failure_reason = v.failure_reason, opened = v.opened, clicked = v.clicked,
            relay_time = coalesce(s.relay_time, now()), update_time = now()
        FROM unnest(%(message_ids)s::bigint[], %(statuses)s::smallint[])
             AS v (message_id, status)
        WHERE s.message_id = v.message_id""",
        "inside CASE/COALESCE",
    ),
    "upsert_profiles": (
        """INSERT INTO profiles AS p (profile_id, email, quarantined, segments)
        SELECT r.profile_id, NULLIF(r.email, ''), r.quarantined, r.segments
        FROM jsonb_to_recordset(%(profiles)s::jsonb)
             AS r (profile_id text, email text, quarantined boolean, segments text[])
        ON CONFLICT (profile_id) DO UPDATE
            SET email = excluded.email, update_time = now()
        RETURNING (xmax = 0) AS created""",
        "ON CONFLICT DO UPDATE SET",
    ),
    "delivery_with_counters": (
        """SELECT d.*, c.*
        FROM deliveries d
        CROSS JOIN LATERAL (
            SELECT coalesce(sum(relayed), 0)::bigint AS relayed
            FROM delivery_counters WHERE delivery_id = d.id
        ) c
        WHERE d.id = %(id)s""",
        "delivery_counters is not filtered",
    ),
    # apply_feedback, cut to the parts Citus refused: a batch spanning deliveries (its
    # messages joined by id alone) and the row lock inside a CTE.
    "apply_feedback": (
        """WITH known AS (
            SELECT e.* FROM unnest(%(message_ids)s::bigint[], %(delivery_ids)s::bigint[])
                 AS e (message_id, delivery_id)
            JOIN sending_logs s ON s.message_id = e.message_id AND s.delivery_id = e.delivery_id
        ),
        current AS (
            SELECT l.message_id, l.outcome FROM known p
            JOIN sending_logs l ON l.message_id = p.message_id
            ORDER BY l.message_id
            FOR NO KEY UPDATE OF l
        )
        SELECT count(*) FROM current""",
        "a row lock inside the CTE current",
    ),
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_the_check_catches_what_citus_refused_before(name: str) -> None:
    sql, expected = BEFORE[name]
    problems = query_problems(name, sql)
    assert any(expected in p for p in problems), problems


def test_a_batch_across_deliveries_is_not_one_shard() -> None:
    problems = query_problems("apply_feedback", BEFORE["apply_feedback"][0])
    assert "apply_feedback: sending_logs is not filtered" in " ".join(problems)


def test_a_fan_out_is_declared_and_takes_no_lock() -> None:
    scan = "SELECT id FROM deliveries WHERE state = 'SENDING' ORDER BY id"
    assert query_problems("undeclared", scan)  # every shard, unannounced
    assert query_problems("listed", scan, fan_outs={"listed": "why"}) == []
    locked = scan + " FOR UPDATE"
    assert "a row lock in a fan-out" in " ".join(
        query_problems("listed", locked, fan_outs={"listed": "why"})
    )


def test_a_filter_reaches_a_joined_table_through_its_distribution_column() -> None:
    joined = """SELECT s.message_id FROM sending_logs s JOIN deliveries d ON d.id = s.delivery_id
                WHERE s.delivery_id = %(delivery_id)s FOR UPDATE OF s"""
    assert query_problems("q", joined) == []
    by_other_column = """SELECT 1 FROM sending_logs s JOIN deliveries d ON d.label = s.email
                         WHERE s.delivery_id = %(delivery_id)s"""
    assert query_problems("q", by_other_column) == [
        "q: deliveries is not filtered by its distribution column with a parameter "
        "(or declare the query a fan-out)"
    ]


def test_now_alone_in_an_update_is_allowed() -> None:
    assert query_problems("q", "UPDATE deliveries SET finish_time = now() WHERE id = %(id)s") == []
