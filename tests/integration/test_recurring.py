"""A recurring delivery that asks for confirmation: each occurrence waits, unsent."""

from __future__ import annotations

from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import duration_pb2
from mta.v1 import mta_service_pb2 as mta

from tests.integration import flows
from tests.integration.conftest import Pair
from tests.support.processes import await_until


async def test_occurrence_waits_for_confirmation(pair: Pair) -> None:
    base = flows.request(["a@example.com", "b@example.com"])
    created = await pair.api.CreateRecurringDelivery(
        pb.CreateRecurringDeliveryRequest(
            label="weekly",
            content=base.content,
            target=base.target,
            validity_period=base.validity_period,
            feedback_mode=pb.FEEDBACK_MODE_EFS,
            interval=duration_pb2.Duration(seconds=3600),
            confirm_before_send=True,
        ),
        timeout=30,
    )
    recurring_id = created.recurring_delivery.id

    async def occurrence_created() -> bool:
        got = await pair.api.GetRecurringDelivery(
            pb.GetRecurringDeliveryRequest(recurring_delivery_id=recurring_id), timeout=10
        )
        return len(got.occurrences) == 1

    await await_until(occurrence_created, 30, message="first occurrence")
    got = await pair.api.GetRecurringDelivery(
        pb.GetRecurringDeliveryRequest(recurring_delivery_id=recurring_id), timeout=10
    )
    (occurrence,) = got.occurrences
    assert occurrence.state == pb.STATE_APPROVED
    assert occurrence.recurring_delivery_id == recurring_id
    assert got.recurring_delivery.occurrences == 1

    # Not sent before its confirmation: a control delivery confirmed after it is relayed
    # in full (so the relay rounds ran), while the occurrence reaches nothing.
    control = await flows.send(pair, flows.request(["c@example.com"]))
    await flows.wait_relayed(pair, control.id)
    still = await pair.api.GetDelivery(pb.GetDeliveryRequest(delivery_id=occurrence.id))
    assert still.delivery.state == pb.STATE_APPROVED
    stub = await pair.mta.GetOutcomes(mta.GetOutcomesRequest(delivery_id=occurrence.id))
    assert stub.accepted == 0
    assert pair.sql(
        "SELECT count(*) FROM sending_logs WHERE delivery_id = %s AND relay_time IS NOT NULL",
        occurrence.id,
    ) == [(0,)]

    await pair.api.ConfirmSend(
        pb.ConfirmSendRequest(delivery_id=occurrence.id), metadata=pair.sender, timeout=30
    )
    await flows.wait_relayed(pair, occurrence.id)
    stub = await pair.mta.GetOutcomes(mta.GetOutcomesRequest(delivery_id=occurrence.id))
    assert stub.accepted == 2


async def test_occurrence_without_confirmation_is_sent(pair: Pair) -> None:
    base = flows.request(["a@example.com"])
    created = await pair.api.CreateRecurringDelivery(
        pb.CreateRecurringDeliveryRequest(
            label="daily",
            content=base.content,
            target=base.target,
            validity_period=base.validity_period,
            feedback_mode=pb.FEEDBACK_MODE_WITHOUT_EFS,
            interval=duration_pb2.Duration(seconds=3600),
        ),
        timeout=30,
    )

    async def sent() -> bool:
        got = await pair.api.GetRecurringDelivery(
            pb.GetRecurringDeliveryRequest(recurring_delivery_id=created.recurring_delivery.id)
        )
        return bool(got.occurrences) and got.occurrences[0].state in (
            pb.STATE_SENDING,
            pb.STATE_SENT,
        )

    await await_until(sent, 30, message="occurrence sent without confirmation")
