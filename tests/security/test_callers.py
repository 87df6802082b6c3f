"""Who did what: idempotency keys scoped to the caller, recurring deliveries under
control (pause, resume, cancel) with their creator recorded, and the occurrences they
send unattended confirmed on that creator's authority."""

from __future__ import annotations

import grpc
import pytest
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import duration_pb2

from delivery_service import admin
from tests.integration import flows
from tests.integration.conftest import Pair
from tests.support.callers import CALLER_ROLES, bearer
from tests.support.processes import await_until


async def test_a_request_id_is_the_callers_own(pair: Pair) -> None:
    other = bearer(await admin.create_operator(pair.database_url, "other", CALLER_ROLES))
    request = flows.request(["a@example.com"], label="first")
    request.request_id = "key-1"
    first = await pair.api.CreateDelivery(request, timeout=30)
    again = await pair.api.CreateDelivery(request, timeout=30)
    assert again.delivery.id == first.delivery.id
    # Another caller's key of the same name is another key: its own delivery.
    theirs = await pair.api.CreateDelivery(request, metadata=other, timeout=30)
    assert theirs.delivery.id != first.delivery.id
    assert theirs.delivery.created_by == "other" and first.delivery.created_by == "caller"
    # The same key with a different request: refused, never another delivery.
    changed = flows.request(["b@example.com"], label="first")
    changed.request_id = "key-1"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.api.CreateDelivery(changed, timeout=30)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (refused.value.details() or "").startswith("request_id:")
    assert pair.sql("SELECT count(*) FROM deliveries") == [(2,)]


def recurring_request(confirm: bool, request_id: str = "") -> pb.CreateRecurringDeliveryRequest:
    base = flows.request(["a@example.com"])
    return pb.CreateRecurringDeliveryRequest(
        label="daily",
        content=base.content,
        target=base.target,
        validity_period=base.validity_period,
        feedback_mode=pb.FEEDBACK_MODE_WITHOUT_EFS,
        interval=duration_pb2.Duration(seconds=1),
        confirm_before_send=confirm,
        request_id=request_id,
    )


async def occurrences(pair: Pair, recurring_id: int) -> pb.GetRecurringDeliveryResponse:
    response: pb.GetRecurringDeliveryResponse = await pair.api.GetRecurringDelivery(
        pb.GetRecurringDeliveryRequest(recurring_delivery_id=recurring_id), timeout=10
    )
    return response


async def test_a_recurring_delivery_is_paused_resumed_and_cancelled(pair: Pair) -> None:
    created = await pair.api.CreateRecurringDelivery(recurring_request(False), timeout=30)
    recurring = created.recurring_delivery
    assert (recurring.state, recurring.created_by) == (pb.RECURRING_STATE_ACTIVE, "caller")

    async def some_sent() -> bool:
        got = await occurrences(pair, recurring.id)
        return any(o.state in (pb.STATE_SENDING, pb.STATE_SENT) for o in got.occurrences)

    await await_until(some_sent, 30, message="an occurrence sent unattended")
    got = await occurrences(pair, recurring.id)
    sent = next(o for o in got.occurrences if o.state != pb.STATE_APPROVED)
    # Confirmed by the scheduler, on the authority of the operator who created it.
    assert sent.confirmed_by == "scheduler for caller"
    assert sent.created_by == "caller"

    control = pb.PauseRecurringDeliveryRequest(recurring_delivery_id=recurring.id)
    paused = await pair.api.PauseRecurringDelivery(control, metadata=pair.sender, timeout=10)
    assert paused.recurring_delivery.state == pb.RECURRING_STATE_PAUSED
    count = paused.recurring_delivery.occurrences
    # Paused: no occurrence starts while several intervals (1 s) pass; a delivery sent
    # meanwhile shows the scheduler's rounds ran.
    witness = await flows.send(pair, flows.request(["w@example.com"]))
    await flows.wait_relayed(pair, witness.id)
    await flows.wait_relayed(pair, (await flows.send(pair, flows.request(["x@example.com"]))).id)
    assert (await occurrences(pair, recurring.id)).recurring_delivery.occurrences == count

    resumed = await pair.api.ResumeRecurringDelivery(
        pb.ResumeRecurringDeliveryRequest(recurring_delivery_id=recurring.id),
        metadata=pair.sender,
        timeout=10,
    )
    assert resumed.recurring_delivery.state == pb.RECURRING_STATE_ACTIVE

    async def started_again() -> bool:
        got = await occurrences(pair, recurring.id)
        return got.recurring_delivery.occurrences > count

    await await_until(started_again, 30, message="occurrences after the resume")

    cancelled = await pair.api.CancelRecurringDelivery(
        pb.CancelRecurringDeliveryRequest(recurring_delivery_id=recurring.id),
        metadata=pair.sender,
        timeout=10,
    )
    assert cancelled.recurring_delivery.state == pb.RECURRING_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.api.ResumeRecurringDelivery(
            pb.ResumeRecurringDeliveryRequest(recurring_delivery_id=recurring.id),
            metadata=pair.sender,
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Controls need start_deliveries.
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await pair.api.PauseRecurringDelivery(control, metadata=pair.approver, timeout=10)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
