"""Preparation's analysis through the API: each drop reason counted, under the enum-keyed
field and the deprecated string-keyed one alike; the watch's figure of relayed messages
under its new name (sent) and its old one; the addresses it calls invalid."""

from __future__ import annotations

from delivery.v1 import delivery_service_pb2 as pb

from delivery_service.domain import addresses
from tests.integration import flows
from tests.integration.conftest import Pair
from tests.unit.test_addresses_and_lifecycle import DELIVERABLE, UNDELIVERABLE


async def test_every_drop_reason_is_counted_under_both_fields(pair: Pair) -> None:
    await pair.api.UpsertProfiles(
        pb.UpsertProfilesRequest(
            profiles=[
                pb.Profile(profile_id="ok", email="ok@example.com"),
                pb.Profile(profile_id="blocked", email="blocked@example.com", quarantined=True),
                pb.Profile(profile_id="silent"),
            ]
        ),
        timeout=30,
    )
    recipients = [
        pb.Recipient(profile_id="ok"),
        pb.Recipient(email="OK@example.com"),  # the same address again: a duplicate
        pb.Recipient(email="x@undeliverable"),
        pb.Recipient(profile_id="missing"),
        pb.Recipient(profile_id="silent"),
        pb.Recipient(profile_id="blocked"),
        pb.Recipient(email="new@example.com"),
    ]
    request = flows.request([])
    request.target.recipients.recipients.extend(recipients)
    created = await pair.api.CreateDelivery(request, timeout=30)
    prepared = await pair.api.PrepareDelivery(
        pb.PrepareDeliveryRequest(delivery_id=created.delivery.id), timeout=60
    )
    assert (prepared.targeted, prepared.to_deliver) == (7, 2)
    expected = [
        (pb.DROP_REASON_DUPLICATE, 1),
        (pb.DROP_REASON_INVALID_ADDRESS, 1),
        (pb.DROP_REASON_QUARANTINED, 1),
        (pb.DROP_REASON_UNKNOWN_PROFILE, 1),
        (pb.DROP_REASON_NO_ADDRESS, 1),
    ]
    assert [(c.reason, c.count) for c in prepared.dropped_counts] == expected
    assert dict(prepared.dropped_by_reason) == {
        pb.DropReason.Name(reason).removeprefix("DROP_REASON_"): n for reason, n in expected
    }
    assert sorted(d.reason for d in prepared.dropped) == sorted(r for r, _ in expected)


async def test_the_watch_says_sent_under_both_names(pair: Pair) -> None:
    delivery = await flows.create_and_approve(pair, flows.request(["a@example.com"]))
    await pair.api.ConfirmSend(
        pb.ConfirmSendRequest(delivery_id=delivery.id), metadata=pair.sender, timeout=30
    )
    async for update in pair.api.WatchDeployment(
        pb.WatchDeploymentRequest(delivery_id=delivery.id), timeout=60
    ):
        assert update.sent == update.relayed == update.kpis.sent
        if update.sent == 1:
            assert update.percent == 100.0
            break


async def test_preparation_drops_as_invalid_what_the_domain_calls_undeliverable(
    pair: Pair,
) -> None:
    """The SQL of preparation and delivery_service.domain.addresses agree, address by
    address: one rule in two regex dialects."""
    emails = DELIVERABLE + UNDELIVERABLE
    created = await pair.api.CreateDelivery(flows.request(emails), timeout=30)
    prepared = await pair.api.PrepareDelivery(
        pb.PrepareDeliveryRequest(delivery_id=created.delivery.id), timeout=60
    )
    invalid = {
        d.recipient.email for d in prepared.dropped if d.reason == pb.DROP_REASON_INVALID_ADDRESS
    }
    assert invalid == {e for e in emails if not addresses.is_deliverable(e)}
    assert invalid == set(UNDELIVERABLE)
