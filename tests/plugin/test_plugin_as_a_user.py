"""The stub's pytest plugin as another team uses it: only its fixtures and the generated
stubs (mta.v1, delivery.v1), nothing else of this project."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2
from mta.v1 import mta_service_pb2 as mta

from mta_stub.pytest_plugin import MtaStub, Pair, Relayer


def test_a_scenario_scoped_to_my_delivery_decides_its_fates_only(
    mta_stub: MtaStub, mta_stub_scenario: Callable[..., None], mta_stub_relayer: Relayer
) -> None:
    bounced, plain = mta_stub.ids.delivery(), mta_stub.ids.delivery()
    mta_stub_scenario(delivery_id=bounced, mix=mta.Mix(hard_bounce_rate=1.0))
    emails = ["ann@example.com", "bob@example.com"]
    bounced_ids = mta_stub_relayer.relay(bounced, emails)
    plain_ids = mta_stub_relayer.relay(plain, [*emails, "soft-1@example.com"])
    fates = mta_stub_relayer.wait_final([*bounced_ids, *plain_ids])
    assert [fates[i] for i in bounced_ids] == [mta.EVENT_KIND_HARD_BOUNCE] * 2
    assert [fates[i] for i in plain_ids] == [mta.EVENT_KIND_DELIVERED] * 3
    outcomes = mta_stub.controls.wait_outcomes(
        lambda o: o.unacknowledged_events == 0, delivery_id=bounced
    )
    assert (outcomes.accepted, outcomes.hard_bounced) == (2, 2)


def test_the_scenario_is_gone_after_the_test_that_set_it(
    mta_stub: MtaStub, mta_stub_relayer: Relayer
) -> None:
    # The ids are the session's: the delivery of the test before is the first one.
    first = mta_stub.ids.prefix | 1
    assert not mta_stub.controls.clear_scenario(delivery_id=first)
    ids = mta_stub_relayer.relay(first, ["late@example.com"])
    assert mta_stub_relayer.wait_final(ids) == {ids[0]: mta.EVENT_KIND_DELIVERED}


def test_a_delivery_through_the_pair_bounces_as_its_scenario_says(mta_stub_pair: Pair) -> None:
    with grpc.insecure_channel(mta_stub_pair.service.address) as channel:
        api = pb_grpc.DeliveryServiceStub(channel)
        auth = mta_stub_pair.metadata
        created = api.CreateDelivery(
            pb.CreateDeliveryRequest(
                label="welcome",
                content=pb.Content(subject="Welcome", body="<p>Hi</p>"),
                target=pb.Target(
                    recipients=pb.RecipientList(
                        recipients=[pb.Recipient(email=f"user{i}@example.com") for i in range(4)]
                    )
                ),
                validity_period=duration_pb2.Duration(seconds=600),
                feedback_mode=pb.FEEDBACK_MODE_EFS,
            ),
            metadata=auth,
            timeout=30,
        )
        delivery_id = created.delivery.id
        # Before it is relayed: the scenario decides fates when the stub accepts a message.
        mta_stub_pair.controls.set_scenario(
            delivery_id=delivery_id, mix=mta.Mix(hard_bounce_rate=1.0)
        )
        api.PrepareDelivery(
            pb.PrepareDeliveryRequest(delivery_id=delivery_id), metadata=auth, timeout=30
        )
        api.ConfirmSend(pb.ConfirmSendRequest(delivery_id=delivery_id), metadata=auth, timeout=30)
        stub = mta_stub_pair.controls.wait_outcomes(
            lambda o: o.accepted == 4 and o.in_flight == 0 and o.unacknowledged_events == 0,
            delivery_id=delivery_id,
        )
        deadline = time.monotonic() + 30
        while True:
            kpis = api.GetKpis(
                pb.GetKpisRequest(delivery_id=delivery_id), metadata=auth, timeout=10
            ).kpis
            if kpis.delivered + kpis.failed == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert (stub.delivered, stub.hard_bounced) == (0, 4)
    assert (kpis.delivered, kpis.failed) == (0, 4)
