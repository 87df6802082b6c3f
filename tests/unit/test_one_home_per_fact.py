"""Each value of the product has one home, the domain, and the protos and the SQL agree
with it: every proto enum value has its domain member and back, with the same number
where the number is stored, and no query repeats a domain value as a bare literal."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest
from delivery.v1 import delivery_service_pb2 as pb
from mta.v1 import mta_service_pb2 as mta

from delivery_service import proto_enums
from delivery_service.domain import feedback as fb
from delivery_service.domain import lifecycle
from delivery_service.domain.preparation import DropReason
from delivery_service.domain.recurring import RecurringState
from delivery_service.store import connection

PAIRS: list[tuple[Any, Any, str]] = [
    (lifecycle.State, pb.State, "STATE_"),
    (lifecycle.ApprovalStep, pb.ApprovalStep, "APPROVAL_STEP_"),
    (fb.FeedbackMode, pb.FeedbackMode, "FEEDBACK_MODE_"),
    (DropReason, pb.DropReason, "DROP_REASON_"),
    (RecurringState, pb.RecurringState, "RECURRING_STATE_"),
    (fb.Status, pb.SendingStatus, "SENDING_STATUS_"),
    (fb.FailureType, pb.FailureType, "FAILURE_TYPE_"),
    (fb.FailureReason, pb.FailureReason, "FAILURE_REASON_"),
    (fb.EventKind, mta.EventKind, "EVENT_KIND_"),
]


@pytest.mark.parametrize(("domain", "proto", "prefix"), PAIRS, ids=lambda p: str(p)[:40])
def test_every_proto_value_has_its_domain_member_and_back(
    domain: Any, proto: Any, prefix: str
) -> None:
    proto_names = {n.removeprefix(prefix) for n in proto.DESCRIPTOR.values_by_name}
    proto_names -= {"UNSPECIFIED"}
    domain_names = {m.name for m in domain} - {"NONE"}
    assert proto_names == domain_names
    for member in domain:
        if isinstance(member.value, int) and member.name != "NONE":
            # Stored as numbers: the domain's numbers are the proto's.
            assert proto.Value(prefix + member.name) == member.value


def test_the_mta_bounce_reasons_are_the_failure_reasons_it_can_report() -> None:
    names = {n.removeprefix("BOUNCE_REASON_") for n in mta.BounceReason.DESCRIPTOR.values_by_name}
    assert names - {"UNSPECIFIED"} == {fb.FailureReason(r).name for r in fb.MTA_BOUNCE_REASONS}
    assert {fb.FailureReason(r): r for r in fb.MTA_BOUNCE_REASONS} == proto_enums.BOUNCE_REASON_MTA


def test_a_drifted_value_fails_at_import() -> None:
    import enum

    class Drifted(enum.IntEnum):
        QUEUED = 2

    with pytest.raises(ValueError, match=r"Drifted\.QUEUED"):
        proto_enums.paired(Drifted, pb.SendingStatus, "SENDING_STATUS_", same_numbers=True)


def _sql_files() -> list[tuple[str, str]]:
    root = resources.files("delivery_service") / "sql"
    files = [*(root / "queries").iterdir(), *(root / "migrations").iterdir(), root / "schema.sql"]
    return [(f.name, f.read_text("utf-8")) for f in files if f.name.endswith(".sql")]


# The queries name states; the schema's CHECK constraints declare the allowed ones.
QUERY_FILES = {f.name for f in (resources.files("delivery_service") / "sql" / "queries").iterdir()}


def _code(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def test_sql_names_the_domain_values_instead_of_repeating_them() -> None:
    """The statuses, outcomes and kinds are numbers in the tables: a comparison of one of
    those columns with a bare number is a copy of the domain's value."""
    column = r"\b(?:status|outcome|failure_type|failure_reason|kind|state)\s*(?:=|<>|IN)\s*\(?\s*"
    for name, text in _sql_files():
        code = _code(text)
        assert not re.search(column + r"\d", code), f"{name} compares a column with a number"
        if name in QUERY_FILES:
            for state in lifecycle.State:
                assert f"'{state}'" not in code, f"{name} spells out '{state}'"


def test_named_values_render_as_literals() -> None:
    assert (
        connection.render("s = {State.SENDING} AND o = {Outcome.NONE}") == "s = 'SENDING' AND o = 0"
    )
    assert connection.render("'{}'::text[]") == "'{}'::text[]"
    assert b"{State." not in b"".join(connection.QUERIES.values())
