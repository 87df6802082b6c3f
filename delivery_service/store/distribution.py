"""How each table is placed on a Citus cluster (docs/scaling.md), and the step that places
them: the delivery is the distribution key; the per-delivery tables are colocated with
`deliveries`; small shared tables are reference tables, copied to every node.

The declaration is checked against the migrated schema by tests/integration/
test_distribution.py, and every named query against it by tools/sql_rules.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg


@dataclass(frozen=True)
class Distributed:
    """Sharded by `column`; colocated with `colocate_with` (None: a group of its own)."""

    column: str
    colocate_with: str | None = None


@dataclass(frozen=True)
class Reference:
    """Copied to every node: small, shared, read by every shard's queries."""


@dataclass(frozen=True)
class Local:
    """Stays on the coordinator."""


Placement = Distributed | Reference | Local

# Every table of the schema, and the views with the table they read.
TABLES: dict[str, Placement] = {
    "operators": Reference(),
    # One row: where the event feed's retention has pruned to.
    "delivery_feed_horizon": Reference(),
    "profiles": Reference(),
    "targets": Reference(),
    "recurring_deliveries": Reference(),
    "deliveries": Distributed("id"),
    "sending_logs": Distributed("delivery_id", "deliveries"),
    "feedback_events": Distributed("delivery_id", "deliveries"),
    "delivery_counters": Distributed("delivery_id", "deliveries"),
    "delivery_domains": Distributed("delivery_id", "deliveries"),
    "delivery_domain_counters": Distributed("delivery_id", "deliveries"),
    "delivery_failure_counters": Distributed("delivery_id", "deliveries"),
    "delivery_alerts": Distributed("delivery_id", "deliveries"),
    "delivery_feed": Distributed("delivery_id", "deliveries"),
    "dropped_recipients": Distributed("delivery_id", "deliveries"),
    # A recipient list belongs to a target, which occurrences of a recurring delivery
    # share: sharded by its target, in a group of its own.
    "target_recipients": Distributed("target_id"),
    # Keyed by a value unique across deliveries: sharded by that value.
    "delivery_requests": Distributed("request_id"),
    # What feedback taught of each address, and its history: sharded by the address,
    # together (an entry and its events are changed in one statement's shard).
    "addresses": Distributed("address"),
    "address_events": Distributed("address", "addresses"),
    # Appended by every state change, read by the admin: sharded by its own id.
    "audit_events": Distributed("id"),
    "schema_migrations": Local(),
}
VIEWS: dict[str, str] = {"tracking_logs": "feedback_events"}

# Queries that read every shard on purpose, and why. Nothing else may: each of their
# references to a distributed table is unfiltered by design, and none takes a row lock.
FAN_OUTS: dict[str, str] = {
    "list_deliveries": "a page of all deliveries, newest first",
    "sending_deliveries": "the scheduler's round: every delivery being relayed",
    "expiring": "the scheduler's round: every delivery whose validity is over",
    "refresh_stats": "the scheduled refresh of Open % and Click % of every live delivery",
    "history_by_profile": "a profile's messages, across deliveries",
    "history_by_email": "an address's messages, across deliveries",
    "list_audit_events": "the admin's page of the audit trail, newest first",
    "analyse_target": "preparation: the quarantined and denylisted addresses, every shard's",
    "erroneous_addresses": "the cleanup round: the erroneous addresses due for release",
    "list_addresses": "a page of the address table, most recently changed first",
    "live_deliveries": "the alerts round: every delivery sending or sent",
    "list_all_alerts": "a page of every delivery's alerts, newest first",
    "feed_page": "the event feed, in transaction order: every delivery's, or one's",
    "feed_end": "where the event feed ends now: every delivery's, or one's",
    "prune_feed": "the event feed's retention: its oldest rows, in feed order",
    "event_log_past_retention": "the retention round: finished deliveries past it",
    "sending_logs_past_retention": "the retention round: finished deliveries past it",
    "address_history_horizon": "the retention round: the deliveries still taking feedback",
    "address_history_work": "the retention round: the next entries in address order",
}


def placement(table: str) -> Placement:
    return TABLES[VIEWS.get(table, table)]


def distribution_column(table: str) -> str | None:
    """The column a table (or a view of one) is distributed by; None if it is not."""
    where = placement(table)
    return where.column if isinstance(where, Distributed) else None


def steps() -> list[tuple[str, str, tuple[str, ...]]]:
    """The distribution step as (table, Citus function, arguments), in the order Citus
    needs: reference tables, then `deliveries`, then what is colocated with it, then the
    tables in groups of their own."""
    references = [
        (t, "create_reference_table", (t,)) for t, p in TABLES.items() if p == Reference()
    ]
    distributed = [(t, p) for t, p in TABLES.items() if isinstance(p, Distributed)]
    ordered = sorted(
        distributed,
        key=lambda item: (item[0] != "deliveries", item[1].colocate_with != "deliveries"),
    )
    return references + [
        (t, "create_distributed_table", (t, p.column, "hash", p.colocate_with or "none"))
        for t, p in ordered
    ]


class NotCitus(Exception):
    """The database is not a Citus coordinator."""


def require_citus(conninfo: str) -> None:
    """Raises NotCitus unless the database is a Citus coordinator."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone():
            raise NotCitus("the database has no citus extension: this step is for a coordinator")


def distribute(conninfo: str) -> list[str]:
    """Places every table on a Citus coordinator, after the migrations; returns the
    tables it placed. Idempotent: a table already placed is left as it is."""
    require_citus(conninfo)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        placed = {
            row[0]
            for row in conn.execute("SELECT logicalrelid::regclass::text FROM pg_dist_partition")
        }
        done = []
        for table, function, args in steps():
            if table in placed:
                continue
            if function == "create_reference_table":
                conn.execute("SELECT create_reference_table(%s)", args)
            else:
                conn.execute(
                    "SELECT create_distributed_table(%s, %s, %s, colocate_with => %s)", args
                )
            done.append(table)
        return done
