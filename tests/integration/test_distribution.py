"""The schema's catalog against the declared placement of every table on a Citus
cluster (delivery_service.store.distribution): the migrated schema follows it, the schema
before migration 0003 did not, and a database of that older schema with deliveries in
flight is migrated in place and finished by today's code with exact figures."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import psycopg
import pytest

from delivery_service.domain import feedback as fb
from delivery_service.domain.kpis import Counters
from delivery_service.store import deliveries as store_deliveries
from delivery_service.store import distribution, ingest, migrations, relay
from delivery_service.store.connection import Database
from delivery_service.store.distribution import Distributed, Local, Reference
from delivery_service.usecases import figures
from tests.support.citus_rules import catalog_problems

BEFORE_CITUS = "0002_hot_sending_logs"


def test_the_migrated_schema_follows_the_declared_placement(fresh_db_url: str) -> None:
    assert catalog_problems(fresh_db_url) == []


def test_the_check_catches_the_schema_before_the_change(empty_db_url: str) -> None:
    migrations.apply(empty_db_url, upto=BEFORE_CITUS)
    problems = catalog_problems(empty_db_url)
    for expected in (
        "feedback_events.feedback_events_pkey: a unique key without the distribution "
        "column delivery_id",
        "sending_logs.sending_logs_pkey: a unique key without the distribution column delivery_id",
        "deliveries.deliveries_request_id_key: a unique key without the distribution column id",
        "delivery_requests: declared but not in the schema",
    ):
        assert expected in problems


def test_the_check_catches_each_class_of_problem(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE parent (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);
            CREATE TABLE child (parent_id bigint REFERENCES parent,
                                n integer GENERATED ALWAYS AS IDENTITY,
                                code text UNIQUE);
            CREATE TABLE other (id bigint PRIMARY KEY, parent_id bigint REFERENCES parent);
            CREATE TABLE shared (id bigint PRIMARY KEY, parent_id bigint REFERENCES parent);
            CREATE TABLE stray (id bigint);
            """
        )
    placement: dict[str, distribution.Placement] = {
        "parent": Distributed("id"),
        "child": Distributed("parent_id", "parent"),
        "other": Distributed("id"),
        "shared": Reference(),
        "gone": Local(),
    }
    assert sorted(catalog_problems(empty_db_url, placement)) == sorted(
        [
            "stray: no declared placement",
            "gone: declared but not in the schema",
            "child.child_code_key: a unique key without the distribution column parent_id",
            "child.n: an identity column must be bigint, not integer",
            "other.other_parent_id_fkey: references parent other than through colocated "
            "distribution columns",
            "shared.shared_parent_id_fkey: a reference table references the distributed "
            "table parent",
        ]
    )


def test_the_distribution_step_places_references_first_and_refuses_plain_postgres(
    fresh_db_url: str,
) -> None:
    order = [table for table, _, _ in distribution.steps()]
    references = [t for t, p in distribution.TABLES.items() if isinstance(p, Reference)]
    assert order[: len(references)] == references
    assert order[len(references)] == "deliveries"
    assert set(order) == {t for t, p in distribution.TABLES.items() if not isinstance(p, Local)}
    with pytest.raises(distribution.NotCitus):
        distribution.distribute(fresh_db_url)


OLD_DELIVERY = """
INSERT INTO targets (segment) VALUES (NULL);
INSERT INTO deliveries (label, subject, body, links, target_id, feedback_mode,
    validity_period, required_approvals, state, to_deliver, targeted, request_id,
    confirm_time, confirmed_by, validity_end_time)
VALUES ('old', 's', 'b', '{}', 1, 'EFS', '1 hour', '{}', 'SENDING', 10, 10, 'req-1',
        now(), 'alice', now() + interval '1 hour');
INSERT INTO sending_logs (delivery_id, email, status, relay_time)
SELECT 1, 'u' || i || '@example.com', CASE WHEN i <= 6 THEN 2 ELSE 1 END,
       CASE WHEN i <= 6 THEN now() END
FROM generate_series(1, 10) AS i;
-- Messages 1-3 delivered, 4 hard-bounced, through the old event log and counters.
UPDATE sending_logs SET outcome = 2, status = 3 WHERE message_id <= 3;
UPDATE sending_logs SET outcome = 4, status = 4, failure_type = 1, failure_reason = 1
WHERE message_id = 4;
INSERT INTO feedback_events (event_id, message_id, delivery_id, kind, reason, event_time)
VALUES ('1:DELIVERED:1', 1, 1, 1, 0, now()), ('2:DELIVERED:1', 2, 1, 1, 0, now()),
       ('3:DELIVERED:1', 3, 1, 1, 0, now()), ('4:HARD_BOUNCE:1', 4, 1, 2, 1, now());
INSERT INTO delivery_counters (delivery_id, shard, relayed, delivered, hard_bounced)
VALUES (1, 3, 6, 3, 1);
"""


async def test_a_delivery_in_flight_is_migrated_and_finished_exactly(empty_db_url: str) -> None:
    migrations.apply(empty_db_url, upto=BEFORE_CITUS)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(OLD_DELIVERY)
    assert "0003_citus_ready" in migrations.apply(empty_db_url)
    assert catalog_problems(empty_db_url) == []
    db = Database(empty_db_url, max_size=2)
    await db.open()
    try:
        # The old request id still names its delivery (its operator was not recorded).
        async with db.connection() as conn:
            assert await store_deliveries.by_request(conn, "", "req-1") == (1, b"")
        # The rest is relayed and reported by today's code; old events sent again are
        # recognised by their ids.
        assert await relay.mark_relayed(db, 1, fb.FeedbackMode.EFS, 6, 10) == 4
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000)
        events = [
            ("1:DELIVERED:1", 1, 1),
            ("4:HARD_BOUNCE:1", 4, 2),
            ("5:DELIVERED:1", 5, 1),
            ("6:DELIVERED:1", 6, 1),
            ("7:HARD_BOUNCE:1", 7, 2),
            ("8:OPENED:1", 8, 5),
        ]
        result = await ingest.apply_feedback(
            db,
            ingest.EventBatch(
                event_ids=[e for e, _, _ in events], message_ids=[m for _, m, _ in events],
                delivery_ids=[1] * len(events), kinds=[k for _, _, k in events],
                reasons=[1 if k == 2 else 0 for _, _, k in events], attempts=[1] * len(events),
                link_indexes=[0] * len(events), event_micros=[now] * len(events),
            ),
        )  # fmt: skip
        # The open of a message never reported delivered is not believed.
        assert (result.applied, result.duplicates) == (3, 2)
        assert result.refused == {"not_delivered": 1}
        with psycopg.connect(empty_db_url, autocommit=True) as conn:
            conn.execute("UPDATE deliveries SET validity_end_time = now() WHERE id = 1")
        assert await figures.finish(db, 1)
        # Messages 8, 9 and 10 were never reported: with EFS they expire.
        assert (await figures.current(db, 1)).counters == Counters(
            relayed=10, delivered=5, hard_bounced=2, expired=3
        )
        _, repaired = await figures.compute_stats(db, 1)
        assert repaired == 0
    finally:
        await db.close()


def test_the_admin_commands_migrate_and_refuse_to_distribute_plain_postgres(
    empty_db_url: str,
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "delivery_service", *args, "--database-url", empty_db_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    refused = run("distribute")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: the database has no citus extension: this step is for a coordinator"
    ]
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (0,)
    migrated = run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == "migrate: " + ", ".join(v for v, _ in migrations.available())
    assert run("migrate").stdout.strip() == "migrate: nothing to do"
