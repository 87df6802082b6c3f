"""ListDeliveries leaves the bodies out unless asked (AIP-157), and a page with bodies
carries at most 3 MiB of them: a list of large deliveries cannot blow up the service."""

from __future__ import annotations

from delivery.v1 import delivery_service_pb2 as pb

from tests.integration import flows
from tests.integration.conftest import Pair

MIB = 1 << 20


async def test_bodies_only_when_asked_and_pages_capped_in_bytes(pair: Pair) -> None:
    for i in range(6):
        request = flows.request([f"u{i}@example.com"], label=f"big {i}")
        request.content.body = "x" * (MIB - 100)
        await pair.api.CreateDelivery(request, timeout=30)
    basic = await pair.api.ListDeliveries(pb.ListDeliveriesRequest(page_size=10), timeout=30)
    assert len(basic.deliveries) == 6 and basic.next_page_token == ""
    assert all(d.content.body == "" and d.content.subject for d in basic.deliveries)
    full = pb.ListDeliveriesRequest(page_size=10, view=pb.DELIVERY_VIEW_FULL)
    first = await pair.api.ListDeliveries(full, timeout=30)
    assert len(first.deliveries) == 3, "bodies of 1 MiB: 3 MiB of them at most"
    assert all(len(d.content.body) == MIB - 100 for d in first.deliveries)
    assert first.next_page_token
    full.page_token = first.next_page_token
    rest = await pair.api.ListDeliveries(full, timeout=30)
    assert [d.label for d in rest.deliveries] == ["big 2", "big 1", "big 0"]
    assert rest.next_page_token == ""
    # A token is bound to its view.
    basic_again = pb.ListDeliveriesRequest(page_size=10, page_token=first.next_page_token)
    try:
        await pair.api.ListDeliveries(basic_again, timeout=30)
    except Exception as err:
        assert "page_token" in str(err)
    else:
        raise AssertionError("a FULL page's token resumed a BASIC list")
