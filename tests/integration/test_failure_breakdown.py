"""The failure breakdown through the real pair: GetKpis and the deployment watch carry
hard and soft failures, failures by reason and the largest recipient domains, from
counters; ComputeStats recomputes them and repairs what drifted."""

from __future__ import annotations

from delivery.v1 import delivery_service_pb2 as pb

from tests.integration import flows
from tests.integration.conftest import Pair

# 3 messages to gmail.com, 2 to yahoo.com, 1 to example.org: ranked in that order.
EMAILS = [
    "hard@gmail.com", "soft-expire@gmail.com", "ok@gmail.com",
    "hard-refused@yahoo.com", "complaint@yahoo.com",
    "ok@example.org",
]  # fmt: skip


def domains(k: pb.Kpis) -> list[tuple[object, ...]]:
    return [
        (d.domain, d.to_deliver, d.sent, d.delivered, d.failed, d.complaints) for d in k.domains
    ]


def failures(k: pb.Kpis) -> list[tuple[int, int, int]]:
    return [(f.failure_type, f.failure_reason, f.messages) for f in k.failures]


async def test_kpis_break_failures_down_by_type_reason_and_domain(pair: Pair) -> None:
    delivery = await flows.send(pair, flows.request(EMAILS, validity_seconds=2))
    await flows.wait_state(pair, delivery.id, pb.STATE_FINISHED)
    k = await flows.kpis(pair, delivery.id)
    assert (k.failed, k.hard_failed, k.soft_failed, k.complaints) == (3, 2, 1, 1)
    assert failures(k) == [
        (pb.FAILURE_TYPE_HARD, pb.FAILURE_REASON_USER_UNKNOWN, 1),
        (pb.FAILURE_TYPE_HARD, pb.FAILURE_REASON_REFUSED, 1),
        (pb.FAILURE_TYPE_SOFT, pb.FAILURE_REASON_EXPIRED, 1),
    ]
    expected = [
        ("gmail.com", 3, 3, 1, 2, 0),
        ("yahoo.com", 2, 2, 1, 1, 1),
        ("example.org", 1, 1, 1, 0, 0),
    ]
    assert domains(k) == expected

    # The watch carries the same figures.
    watch = pair.api.WatchDeployment(pb.WatchDeploymentRequest(delivery_id=delivery.id))
    first = await watch.read()
    watch.cancel()
    assert domains(first.kpis) == expected and failures(first.kpis) == failures(k)

    # Counters that drifted are repaired by a recount from the logs.
    pair.sql(
        "UPDATE delivery_domain_counters SET delivered = delivered + 5 WHERE delivery_id = %s"
        " RETURNING 1",
        delivery.id,
    )
    pair.sql(
        "UPDATE delivery_failure_counters SET failed = 0 WHERE delivery_id = %s RETURNING 1",
        delivery.id,
    )
    assert domains(await flows.kpis(pair, delivery.id)) != expected
    stats = await pair.api.ComputeStats(pb.ComputeStatsRequest(delivery_id=delivery.id))
    assert stats.repaired_counters > 0
    k = await flows.kpis(pair, delivery.id)
    assert domains(k) == expected
    assert (k.hard_failed, k.soft_failed, len(k.failures)) == (2, 1, 3)
    again = await pair.api.ComputeStats(pb.ComputeStatsRequest(delivery_id=delivery.id))
    assert again.repaired_counters == 0
