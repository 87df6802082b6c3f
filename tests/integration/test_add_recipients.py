"""AddRecipients: a DRAFT delivery's recipient list built a call at a time, each call at
the list's end, a repeated call recognised and changing nothing, and preparation taking
the whole list in order."""

from __future__ import annotations

import grpc
import pytest
from delivery.v1 import delivery_service_pb2 as pb

from tests.integration import flows
from tests.integration.conftest import Pair


def recipients(*emails: str) -> pb.RecipientList:
    return pb.RecipientList(recipients=[pb.Recipient(email=e) for e in emails])


async def add(pair: Pair, delivery_id: int, position: int, *emails: str) -> int:
    response = await pair.api.AddRecipients(
        pb.AddRecipientsRequest(
            delivery_id=delivery_id, position=position, recipients=recipients(*emails)
        ),
        timeout=30,
    )
    return int(response.length)


async def refused(
    pair: Pair, delivery_id: int, position: int, *emails: str
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await add(pair, delivery_id, position, *emails)
    return raised.value


async def test_a_list_grows_call_by_call_and_a_repeated_call_changes_nothing(pair: Pair) -> None:
    created = await pair.api.CreateDelivery(flows.request(["a@example.com", "b@example.com"]))
    delivery_id = created.delivery.id
    assert await add(pair, delivery_id, 2, "c@example.com", "A@example.com") == 4
    # The answer was lost, the caller sends the call again: the same list.
    assert await add(pair, delivery_id, 2, "c@example.com", "A@example.com") == 4
    assert await add(pair, delivery_id, 3, "A@example.com") == 4  # a part of it, too
    other = await refused(pair, delivery_id, 2, "d@example.com", "A@example.com")
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "next call's position is 4" in (other.details() or "")
    gap = await refused(pair, delivery_id, 5, "e@example.com")
    assert gap.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "past the end of the list (4 recipients)" in (gap.details() or "")
    assert await add(pair, delivery_id, 4, "e@example.com") == 5

    prepared = await pair.api.PrepareDelivery(
        pb.PrepareDeliveryRequest(delivery_id=delivery_id), timeout=60
    )
    assert (prepared.targeted, prepared.to_deliver) == (5, 4)
    assert [(d.recipient.email, d.reason) for d in prepared.dropped] == [
        ("A@example.com", pb.DROP_REASON_DUPLICATE)
    ]
    logs = await flows.logs(pair, delivery_id)
    assert [log.email for log in logs] == [
        "a@example.com", "b@example.com", "c@example.com", "e@example.com"
    ]  # fmt: skip
    # Prepared: its list is what was analysed.
    late = await refused(pair, delivery_id, 5, "f@example.com")
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "recipients are added to a DRAFT delivery only" in (late.details() or "")


async def test_what_cannot_take_recipients_says_why(pair: Pair) -> None:
    segment = flows.request([])
    segment.target.segment = "vip"
    created = await pair.api.CreateDelivery(segment)
    to_segment = await refused(pair, created.delivery.id, 0, "a@example.com")
    assert to_segment.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "targets the segment 'vip'" in (to_segment.details() or "")
    unknown = await refused(pair, 10**12, 0, "a@example.com")
    assert unknown.code() == grpc.StatusCode.NOT_FOUND

    listed = await pair.api.CreateDelivery(flows.request(["a@example.com"]))
    for position, emails, field in [
        (-1, ["b@example.com"], "position"),
        (10_000_000, ["b@example.com"], "position"),
        (1, [], "recipients"),
        (1, ["not an address"], "recipients.recipients[0].email"),
    ]:
        error = await refused(pair, listed.delivery.id, position, *emails)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (position, emails)
        assert field in (error.details() or ""), error.details()
