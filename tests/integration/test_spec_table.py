"""SPEC.md's table through the real pair: each row, in both feedback modes (12 cases).

Each case sends one message to an address whose fate the stub documents, waits
until the service has committed the event the row is about, then checks the
sending-log status and the Delivered % / Bounces + errors % at that point.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from delivery.v1 import delivery_service_pb2 as pb

from tests.integration import flows
from tests.integration.conftest import Pair
from tests.support import drift

SENT, PENDING, FAILED = pb.SENDING_STATUS_SENT, pb.SENDING_STATUS_PENDING, pb.SENDING_STATUS_FAILED


@dataclass(frozen=True)
class Row:
    event: str
    address: str
    validity_seconds: int
    # The event the row is about (a feedback_events kind), or None: wait for the relay,
    # or "finished": wait for the end of the validity.
    wait_for: int | str | None
    # (status, Delivered %, Bounces + errors %) without EFS, then with EFS.
    without_efs: tuple[int, float, float]
    with_efs: tuple[int, float, float]


ROWS = [
    Row("relayed to the MTA", "delay-600000@example.com", 120, None,
        (SENT, 100.0, 0.0), (PENDING, 0.0, 0.0)),
    Row("delivery reported", "plain@example.com", 120, flows.DELIVERED,
        (SENT, 100.0, 0.0), (SENT, 100.0, 0.0)),
    Row("hard bounce", "hard-user-unknown@example.com", 120, flows.HARD_BOUNCE,
        (FAILED, 0.0, 100.0), (FAILED, 0.0, 100.0)),
    Row("soft bounce (then retried)", "soft-expire@example.com", 120, flows.SOFT_BOUNCE,
        (SENT, 100.0, 0.0), (FAILED, 0.0, 100.0)),
    Row("a retry succeeds before the validity ends", "soft-1@example.com", 120, flows.DELIVERED,
        (SENT, 100.0, 0.0), (SENT, 100.0, 0.0)),
    Row("retries fail until the validity ends", "soft-expire@example.com", 2, "finished",
        (FAILED, 0.0, 100.0), (FAILED, 0.0, 100.0)),
    # SPEC.md's "Complaints and late bounces": a hard bounce after the delivery report
    # fails the message in both modes; a complaint changes no status, only complaints.
    Row("a late hard bounce", "late-hard-300@example.com", 120, flows.HARD_BOUNCE,
        (FAILED, 0.0, 100.0), (FAILED, 0.0, 100.0)),
    Row("a complaint", "complaint@example.com", 120, flows.COMPLAINT,
        (SENT, 100.0, 0.0), (SENT, 100.0, 0.0)),
]  # fmt: skip
# What each row leaves of its address (domain.quarantine.AddressStatus): 1 VALID,
# 2 ERRONEOUS, 3 QUARANTINED, 4 DENYLISTED.
ADDRESS_STATUS = {
    "hard bounce": 3,
    "a late hard bounce": 3,
    "a complaint": 4,
    "soft bounce (then retried)": 2,
    "retries fail until the validity ends": 2,
}

MODES = {"without EFS": pb.FEEDBACK_MODE_WITHOUT_EFS, "with EFS": pb.FEEDBACK_MODE_EFS}


@pytest.mark.parametrize("mode_name", list(MODES))
@pytest.mark.parametrize("row", ROWS, ids=[r.event for r in ROWS])
async def test_row(pair: Pair, row: Row, mode_name: str) -> None:
    mode = MODES[mode_name]
    delivery = await flows.send(
        pair, flows.request([row.address], mode, validity_seconds=row.validity_seconds)
    )
    await flows.wait_relayed(pair, delivery.id)
    (log,) = await flows.logs(pair, delivery.id)
    if row.wait_for == "finished":
        await flows.wait_state(pair, delivery.id, pb.STATE_FINISHED)
    elif row.wait_for is not None:
        assert isinstance(row.wait_for, int)
        await flows.wait_event(pair, log.message_id, row.wait_for)

    status, delivered, bounces = row.without_efs if mode_name == "without EFS" else row.with_efs
    (log,) = await flows.logs(pair, delivery.id)
    k = await flows.kpis(pair, delivery.id)
    assert pb.SendingStatus.Name(log.status) == pb.SendingStatus.Name(
        pb.SendingStatus.ValueType(status)
    )
    assert (k.delivered_percent, k.bounces_percent) == (delivered, bounces)
    assert (k.to_deliver, k.sent) == (1, 1)
    assert k.failed == (1 if status == FAILED else 0)
    if status == FAILED:
        hard = row.wait_for == flows.HARD_BOUNCE
        assert log.failure_type == (pb.FAILURE_TYPE_HARD if hard else pb.FAILURE_TYPE_SOFT)
        expected_reason = {
            flows.HARD_BOUNCE: pb.FAILURE_REASON_USER_UNKNOWN,
            flows.SOFT_BOUNCE: pb.FAILURE_REASON_MAILBOX_FULL,
            "finished": pb.FAILURE_REASON_EXPIRED,
        }[row.wait_for]
        assert log.failure_reason == expected_reason
    if row.wait_for == "finished":
        assert k.final
    complained = row.wait_for == flows.COMPLAINT
    assert (k.complaints, k.complaint_percent, log.complained) == (
        (1, 100.0, True) if complained else (0, 0.0, False)
    )
    # An address no feedback spoke of yet has no entry: VALID.
    entry = pair.sql("SELECT status FROM addresses WHERE address = %s", row.address.lower())
    assert (entry[0][0] if entry else 1) == ADDRESS_STATUS.get(row.event, 1)
    # A counting bug must not hide behind a recount: recount now (most rows end before
    # FINISHED's), and neither this recount nor FINISHED's may have repaired a counter.
    stats = await pair.api.ComputeStats(pb.ComputeStatsRequest(delivery_id=delivery.id), timeout=30)
    assert stats.repaired_counters == 0
    drift.assert_no_drift([pair.service.log_path])
