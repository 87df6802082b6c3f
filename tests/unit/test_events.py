"""The event feed's domain: kinds and positions."""

from __future__ import annotations

import grpc
from delivery.v1 import delivery_service_pb2 as pb

from delivery_service.api import errors
from delivery_service.domain import events as ev
from delivery_service.domain import feedback as fb
from delivery_service.store.connection import OutOfRange


def test_every_feedback_kind_has_the_feed_kind_of_its_name() -> None:
    assert {fb.EventKind(k).name: ev.kind_of_feedback(k).name for k in fb.EventKind} == {
        k.name: k.name for k in fb.EventKind
    }


def test_feed_kinds_have_delivery_v1_values() -> None:
    for kind in ev.EventKind:
        assert pb.DeliveryEventKind.Value("DELIVERY_EVENT_KIND_" + kind.name) == kind.value


def test_positions_order_by_transaction_then_row_then_item() -> None:
    assert ev.START < ev.Position(0, 0, 1) < ev.Position(0, 1, 0) < ev.Position(1, 0, 0)
    assert ev.Position(0, 0, 0) == ev.START


def test_the_sources_of_feed_rows_are_stored_numbers() -> None:
    assert [(s.name, s.value) for s in ev.FeedSource] == [
        ("RELAY", 1), ("FEEDBACK", 2), ("EXPIRY", 3)
    ]  # fmt: skip


def test_a_cursor_past_the_retention_is_out_of_range() -> None:
    status = errors.status_of(OutOfRange("the cursor is older than the retention"))
    assert status is not None and status.code == grpc.StatusCode.OUT_OF_RANGE
    assert status.details == "the cursor is older than the retention"
