"""10,000 recipients under the stub's seeded mix, run to FINISHED: every figure agrees."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from delivery.v1 import delivery_service_pb2 as pb
from mta.v1 import mta_service_pb2 as mta

from mta_stub import presets
from tests.conftest import Servers
from tests.integration import flows
from tests.integration.conftest import Pair, open_pair
from tests.support import drift
from tests.support.processes import await_until

N = 10_000


@pytest.fixture
async def loaded_pair(fresh_db_url: str, servers: Servers) -> AsyncIterator[Pair]:
    processes = servers.pair(
        fresh_db_url,
        stub_args=("--retry-interval-ms", "200", "--engagement-delay-ms", "100"),
        # A grace long enough to compare the live counters before the end of validity recounts.
        service_args=("--stats-interval", "1", "--finalize-grace", "4"),
    )
    async for p in open_pair(processes.service, processes.stub, fresh_db_url):
        yield p


@pytest.mark.parametrize("mode", [pb.FEEDBACK_MODE_EFS, pb.FEEDBACK_MODE_WITHOUT_EFS])
async def test_seeded_mix_to_finished(loaded_pair: Pair, mode: pb.FeedbackMode.ValueType) -> None:
    pair = loaded_pair
    await pair.mta.SetScenario(mta.SetScenarioRequest(mix=presets.SEEDED_MIX), timeout=10)
    for start in range(0, N, 5000):
        await pair.api.UpsertProfiles(
            pb.UpsertProfilesRequest(
                profiles=[
                    pb.Profile(profile_id=f"p{i}", email=f"user{i}@example.com", segments=["load"])
                    for i in range(start, start + 5000)
                ]
            ),
            timeout=60,
        )
    req = flows.request([], mode, validity_seconds=12)
    req.target.CopyFrom(pb.Target(segment="load"))
    delivery = await flows.send(pair, req)
    assert delivery.to_deliver == N

    async def settled() -> bool:
        got = await pair.mta.GetOutcomes(mta.GetOutcomesRequest(delivery_id=delivery.id))
        return got.accepted == N and got.in_flight == 0 and got.unacknowledged_events == 0

    await await_until(settled, 90, message="stub settled: every fate reported and acknowledged")
    live = await flows.kpis(pair, delivery.id)
    recomputed = await pair.api.ComputeStats(pb.ComputeStatsRequest(delivery_id=delivery.id))
    assert recomputed.repaired_counters == 0
    for field in ("to_deliver", "sent", "delivered", "failed", "pending"):
        assert getattr(live, field) == getattr(recomputed.kpis, field), field

    finished = await flows.wait_state(pair, delivery.id, pb.STATE_FINISHED, timeout=60)
    assert finished.state == pb.STATE_FINISHED
    final = await flows.kpis(pair, delivery.id)
    assert final.final
    # FINISHED's recount found every counter as counted live: no bug hidden by a repair.
    drift.assert_no_drift([pair.service.log_path])
    stub = await pair.mta.GetOutcomes(mta.GetOutcomesRequest(delivery_id=delivery.id))
    assert (stub.accepted, stub.duplicates) == (N, 0)
    assert final.sent == N
    assert final.failed == stub.hard_bounced + stub.expired
    assert final.opened == stub.opened and final.clicked == stub.clicked
    if mode == pb.FEEDBACK_MODE_EFS:
        assert final.delivered == stub.delivered
    else:
        assert final.delivered == N - stub.hard_bounced - stub.expired
    assert stub.delivered + stub.hard_bounced + stub.expired == N
    assert 0 < stub.hard_bounced < N and 0 < stub.expired < N and stub.clicked > 0
    (counts,) = pair.sql(
        "SELECT count(*) FILTER (WHERE status = 3), count(*) FILTER (WHERE status = 4),"
        " count(*) FILTER (WHERE status NOT IN (3, 4)) FROM sending_logs WHERE delivery_id = %s",
        delivery.id,
    )
    assert counts == (N - final.failed, final.failed, 0)

    # Every message is in its profile's history, with its status.
    assert pair.sql(
        "SELECT count(*) FROM sending_logs s JOIN profiles p USING (profile_id)"
        " WHERE s.delivery_id = %s AND s.email = p.email",
        delivery.id,
    ) == [(N,)]
    statuses = {log.profile_id: log.status for log in await flows.logs(pair, delivery.id)}
    for i in random.Random(7).sample(range(N), 300):
        history = await pair.api.GetProfileHistory(
            pb.GetProfileHistoryRequest(profile_id=f"p{i}"), timeout=10
        )
        (entry,) = history.sending_logs
        assert entry.delivery_id == delivery.id and entry.status == statuses[f"p{i}"]
