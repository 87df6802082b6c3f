"""Steps the integration tests share: send a delivery, wait for what the MTA reported."""

from __future__ import annotations

from collections.abc import Sequence

from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import duration_pb2

from tests.integration.conftest import Pair
from tests.support.processes import await_until

TIMEOUT = 60.0

# mta.v1.EventKind values, as stored in feedback_events.kind.
DELIVERED, HARD_BOUNCE, SOFT_BOUNCE, EXPIRED, OPENED, CLICKED = 1, 2, 3, 4, 5, 6
COMPLAINT, IGNORED = 7, 8


def request(
    emails: Sequence[str],
    mode: pb.FeedbackMode.ValueType = pb.FEEDBACK_MODE_EFS,
    *,
    validity_seconds: int = 120,
    approvals: Sequence[pb.ApprovalStep.ValueType] = (),
    label: str = "test delivery",
) -> pb.CreateDeliveryRequest:
    return pb.CreateDeliveryRequest(
        label=label,
        content=pb.Content(
            subject="Hello",
            body="<p>Hi <a href='https://example.com/a'>a</a></p>",
            links=["https://example.com/a"],
        ),
        target=pb.Target(
            recipients=pb.RecipientList(recipients=[pb.Recipient(email=e) for e in emails])
        ),
        validity_period=duration_pb2.Duration(seconds=validity_seconds),
        feedback_mode=mode,
        required_approvals=list(approvals),
    )


async def create_and_approve(pair: Pair, req: pb.CreateDeliveryRequest) -> pb.Delivery:
    created = await pair.api.CreateDelivery(req, timeout=30)
    prepared = await pair.api.PrepareDelivery(
        pb.PrepareDeliveryRequest(delivery_id=created.delivery.id), timeout=60
    )
    delivery = prepared.delivery
    for step in req.required_approvals:
        delivery = (
            await pair.api.ApproveDelivery(
                pb.ApproveDeliveryRequest(delivery_id=delivery.id, step=step),
                metadata=pair.approver,
                timeout=30,
            )
        ).delivery
    assert delivery.state == pb.STATE_APPROVED
    return delivery


async def send(pair: Pair, req: pb.CreateDeliveryRequest) -> pb.Delivery:
    delivery = await create_and_approve(pair, req)
    confirmed = await pair.api.ConfirmSend(
        pb.ConfirmSendRequest(delivery_id=delivery.id), metadata=pair.sender, timeout=30
    )
    assert confirmed.delivery.state == pb.STATE_SENDING
    return confirmed.delivery


async def logs(pair: Pair, delivery_id: int) -> list[pb.SendingLog]:
    out: list[pb.SendingLog] = []
    token = ""
    while True:
        page = await pair.api.ListSendingLogs(
            pb.ListSendingLogsRequest(delivery_id=delivery_id, page_size=1000, page_token=token),
            timeout=30,
        )
        out.extend(page.sending_logs)
        token = page.next_page_token
        if not token:
            return out


async def kpis(pair: Pair, delivery_id: int) -> pb.Kpis:
    return (await pair.api.GetKpis(pb.GetKpisRequest(delivery_id=delivery_id), timeout=30)).kpis


async def wait_event(pair: Pair, message_id: int, kind: int, timeout: float = TIMEOUT) -> None:
    """Waits until the service has committed an event of this kind for the message."""

    async def applied() -> bool:
        return bool(
            pair.sql(
                "SELECT 1 FROM feedback_events WHERE message_id = %s AND kind = %s",
                message_id,
                kind,
            )
        )

    await await_until(applied, timeout, message=f"event {kind} for message {message_id}")


async def wait_state(
    pair: Pair, delivery_id: int, state: pb.State.ValueType, timeout: float = TIMEOUT
) -> pb.Delivery:
    async def reached() -> bool:
        got = await pair.api.GetDelivery(pb.GetDeliveryRequest(delivery_id=delivery_id), timeout=10)
        return bool(got.delivery.state == state)

    await await_until(reached, timeout, message=f"delivery {delivery_id} in state {state}")
    return (
        await pair.api.GetDelivery(pb.GetDeliveryRequest(delivery_id=delivery_id), timeout=10)
    ).delivery


async def wait_relayed(pair: Pair, delivery_id: int, timeout: float = TIMEOUT) -> None:
    async def relayed() -> bool:
        k = await kpis(pair, delivery_id)
        return bool(k.sent == k.to_deliver)

    await await_until(relayed, timeout, message=f"delivery {delivery_id} relayed")
