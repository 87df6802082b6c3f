"""Generated garbage into every RPC of both services: a clear status, never UNKNOWN or
INTERNAL, and a refused request leaves the database exactly as it was.

The delivery service runs with its scheduler asleep (one round at start, then an hour),
so that nothing but the request under test can change the database while it runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
import pytest
from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import address_service_pb2_grpc as adpb_grpc
from delivery.v1 import admin_service_pb2 as apb
from delivery.v1 import admin_service_pb2_grpc as apb_grpc
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mta.v1 import mta_service_pb2 as mta
from mta.v1 import mta_service_pb2_grpc as mta_grpc

from delivery_service import authorization
from tests.conftest import Servers
from tests.support.callers import CALLER_ROLES
from tests.support.processes import create_operator
from tests.support.proto_strategies import messages

EXAMPLES = 130
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
# Columns the scheduler's start-up round may still be writing; never touched by a request.
VOLATILE = {"deliveries": "stats_time, opened_at_stats, clicked_at_stats"}
# Every table a request may write, but audit_events: a refused state change is recorded
# there on purpose.
TABLES = [
    "operators", "profiles", "targets", "target_recipients", "recurring_deliveries",
    "deliveries", "delivery_requests", "dropped_recipients", "sending_logs",
    "feedback_events", "delivery_counters", "addresses", "address_events",
    "delivery_alerts", "delivery_domains", "delivery_domain_counters",
    "delivery_failure_counters", "delivery_feed", "delivery_feed_horizon",
]  # fmt: skip
UNCHECKED_TABLES = {"audit_events"}

# The services of the delivery service's process: their client stubs.
STUBS: dict[str, Any] = {
    "DeliveryService": pb_grpc.DeliveryServiceStub,
    "AdminService": apb_grpc.AdminServiceStub,
    "AddressService": adpb_grpc.AddressServiceStub,
}
# "Service/Method" -> its request.
DELIVERY_RPCS: dict[str, type[Message]] = {
    "DeliveryService/CreateDelivery": pb.CreateDeliveryRequest,
    "DeliveryService/AddRecipients": pb.AddRecipientsRequest,
    "DeliveryService/PrepareDelivery": pb.PrepareDeliveryRequest,
    "DeliveryService/ApproveDelivery": pb.ApproveDeliveryRequest,
    "DeliveryService/ConfirmSend": pb.ConfirmSendRequest,
    "DeliveryService/StopDelivery": pb.StopDeliveryRequest,
    "DeliveryService/GetDelivery": pb.GetDeliveryRequest,
    "DeliveryService/ListDeliveries": pb.ListDeliveriesRequest,
    "DeliveryService/WatchDeployment": pb.WatchDeploymentRequest,
    "DeliveryService/GetKpis": pb.GetKpisRequest,
    "DeliveryService/ComputeStats": pb.ComputeStatsRequest,
    "DeliveryService/ListSendingLogs": pb.ListSendingLogsRequest,
    "DeliveryService/GetProfileHistory": pb.GetProfileHistoryRequest,
    "DeliveryService/UpsertProfiles": pb.UpsertProfilesRequest,
    "DeliveryService/ListAlerts": pb.ListAlertsRequest,
    "DeliveryService/ListDeliveryEvents": pb.ListDeliveryEventsRequest,
    "DeliveryService/WatchDeliveryEvents": pb.WatchDeliveryEventsRequest,
    "DeliveryService/GetMessageTimeline": pb.GetMessageTimelineRequest,
    "DeliveryService/CreateRecurringDelivery": pb.CreateRecurringDeliveryRequest,
    "DeliveryService/GetRecurringDelivery": pb.GetRecurringDeliveryRequest,
    "DeliveryService/PauseRecurringDelivery": pb.PauseRecurringDeliveryRequest,
    "DeliveryService/ResumeRecurringDelivery": pb.ResumeRecurringDeliveryRequest,
    "DeliveryService/CancelRecurringDelivery": pb.CancelRecurringDeliveryRequest,
    "AdminService/CreateOperator": apb.CreateOperatorRequest,
    "AdminService/ListOperators": apb.ListOperatorsRequest,
    "AdminService/RevokeOperator": apb.RevokeOperatorRequest,
    "AdminService/RotateOperatorToken": apb.RotateOperatorTokenRequest,
    "AdminService/ListAuditEvents": apb.ListAuditEventsRequest,
    "AddressService/ListAddresses": adpb.ListAddressesRequest,
    "AddressService/GetAddress": adpb.GetAddressRequest,
    "AddressService/SetAddressStatus": adpb.SetAddressStatusRequest,
    "AddressService/ReleaseAddresses": adpb.ReleaseAddressesRequest,
}


@dataclass
class Target:
    database_url: str
    channel: grpc.Channel
    mta_channel: grpc.Channel
    tokens: list[list[tuple[str, str]] | None]
    tried: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    _snapshot: str | None = None
    _conn: psycopg.Connection[Any] | None = None

    def snapshot(self) -> list[Any]:
        """Each table's row count and a digest of its rows, in one statement on a kept
        connection (a connection and a statement per table made the file the suite's
        longest: two snapshots per generated request)."""
        if self._snapshot is None:
            self._conn = psycopg.connect(self.database_url, autocommit=True)
            self._snapshot = " UNION ALL ".join(
                f"SELECT '{table}', count(*), md5(string_agg(t::text, ',' ORDER BY t::text))"
                f" FROM (SELECT {self._columns(table)} FROM {table}) t"
                for table in TABLES
            )
        assert self._conn is not None
        return self._conn.execute(self._snapshot.encode()).fetchall()

    def _columns(self, table: str) -> str:
        if table not in VOLATILE:
            return "*"
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            names = conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = %s ORDER BY ordinal_position",
                (table,),
            ).fetchall()
        return ", ".join(n for (n,) in names if n not in VOLATILE[table].split(", "))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


@pytest.fixture(scope="module")
def target(module_db_url: str, module_servers: Servers) -> Iterator[Target]:
    # Module scope: one database and one pair for the whole generated run.
    fresh = module_db_url
    stub = module_servers.mta_stub()
    service = module_servers.delivery_service(fresh, stub.address, "--tick", "3600")
    both = create_operator(fresh, "both", *CALLER_ROLES)
    nothing = create_operator(fresh, "nothing")
    # The AdminService's garbage needs an admin to get past authorization.
    admin = create_operator(fresh, "fuzz-admin", "admin")
    tokens: list[list[tuple[str, str]] | None] = [
        None,
        [("authorization", "Bearer garbage")],
        [("authorization", f"Bearer {nothing}")],
        [("authorization", f"Bearer {both}")],
        [("authorization", f"Bearer {admin}")],
    ]
    with (
        grpc.insecure_channel(service.address) as channel,
        grpc.insecure_channel(stub.address) as mta_channel,
    ):
        seed(channel, tokens[3], fresh)
        target = Target(fresh, channel, mta_channel, tokens)
        try:
            yield target
        finally:
            target.close()


def seed(channel: grpc.Channel, token: list[tuple[str, str]] | None, database_url: str) -> None:
    """Deliveries in several states, profiles, address entries and an alert, for the
    garbage to hit."""
    api = pb_grpc.DeliveryServiceStub(channel)
    api.UpsertProfiles(
        pb.UpsertProfilesRequest(
            profiles=[pb.Profile(profile_id=str(i), email=f"p{i}@example.com") for i in range(5)]
        ),
        metadata=token,
    )
    for i in range(4):
        created = api.CreateDelivery(
            pb.CreateDeliveryRequest(
                label=f"seed {i}",
                content=pb.Content(subject="s", body="b"),
                target=pb.Target(
                    recipients=pb.RecipientList(
                        recipients=[pb.Recipient(profile_id="1"), pb.Recipient(email="x@y.org")]
                    )
                ),
                validity_period=duration_pb2.Duration(seconds=3600),
                feedback_mode=pb.FEEDBACK_MODE_EFS,
                required_approvals=[pb.APPROVAL_STEP_TARGET] if i == 1 else [],
            ),
            metadata=token,
        )
        if i >= 1:
            api.PrepareDelivery(
                pb.PrepareDeliveryRequest(delivery_id=created.delivery.id), metadata=token
            )
        if i == 3:
            api.ConfirmSend(pb.ConfirmSendRequest(delivery_id=created.delivery.id), metadata=token)
    addresses = adpb_grpc.AddressServiceStub(channel)
    for address, status in (
        ("quarantined@example.com", adpb.ADDRESS_STATUS_QUARANTINED),
        ("denylisted@example.org", adpb.ADDRESS_STATUS_DENYLISTED),
    ):
        addresses.SetAddressStatus(
            adpb.SetAddressStatusRequest(address=address, status=status), metadata=token
        )
    # The scheduler sleeps: the alert its round would raise for the delivery being sent.
    with psycopg.connect(database_url, autocommit=True) as conn:
        inserted = conn.execute(
            "INSERT INTO delivery_alerts (delivery_id, criterion, raise_day, raise_time, value,"
            " threshold, message, stopped) SELECT id, 3, current_date, now(), 1200, 900,"
            " 'nothing relayed 1200 s after the send was confirmed', false"
            " FROM deliveries WHERE state = 'SENDING'"
        )
        assert inserted.rowcount == 1


def call_delivery(target: Target, name: str, request: Message, token: Any) -> grpc.StatusCode:
    """`name` ("Service/Method") called on the delivery service's process."""
    service, method_name = name.split("/")
    method = getattr(STUBS[service](target.channel), method_name)
    try:
        if name in STREAMS:
            # A refusal comes before the first message; after it, the watch is taken.
            stream = method(request, metadata=token, timeout=10)
            next(stream)
            stream.cancel()
        else:
            method(request, metadata=token, timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()
        if code == grpc.StatusCode.CANCELLED and name in STREAMS:
            return grpc.StatusCode.OK
        return code


# The delivery service's server streams.
STREAMS = {"DeliveryService/WatchDeployment", "DeliveryService/WatchDeliveryEvents"}


@pytest.mark.parametrize("name", list(DELIVERY_RPCS))
def test_delivery_service_garbage(target: Target, name: str) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=messages(DELIVERY_RPCS[name]), who=st.integers(0, len(target.tokens) - 1))
    def run(request: Message, who: int) -> None:
        before = target.snapshot()
        code = call_delivery(target, name, request, target.tokens[who])
        target.tried[name] = target.tried.get(name, 0) + 1
        assert code not in FORBIDDEN, f"{name} answered {code} to {request}"
        if code != grpc.StatusCode.OK:
            target.refused[name] = target.refused.get(name, 0) + 1
            assert target.snapshot() == before, f"{name} refused {code} but wrote"

    run()
    assert target.tried[name] >= EXAMPLES
    assert target.refused.get(name, 0) > 0, "the generator never hit a refusal"


def test_every_rpc_and_table_is_covered(target: Target) -> None:
    """An RPC of the process, or a table of the schema, left out here would go untried."""
    served = {
        f"{service}/{m.name}"
        for service, module in (
            ("DeliveryService", pb),
            ("AdminService", apb),
            ("AddressService", adpb),
        )
        for m in module.DESCRIPTOR.services_by_name[service].methods
    }
    assert set(DELIVERY_RPCS) == served
    table = {
        rpc.removeprefix("/delivery.v1.")
        for rpc, rule in authorization.DELIVERY_SERVICE.items()
        if rule != authorization.OPEN
    }
    assert table == served
    with psycopg.connect(target.database_url, autocommit=True) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
    assert tables - {"schema_migrations"} == set(TABLES) | UNCHECKED_TABLES


def _exchange(target: Target, requests: list[mta.ExchangeRequest]) -> grpc.StatusCode:
    stub = mta_grpc.MtaServiceStub(target.mta_channel)
    call = stub.Exchange(iter(requests), timeout=5)
    try:
        # The stream stays open for feedback; a good batch ends in a relay ack we read.
        for _ in itertools.islice(call, len(requests)):
            pass
        call.cancel()
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()
        # Our own cancel, or the stream waiting for more after good input: not a refusal.
        if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
            return grpc.StatusCode.OK
        return code


MTA_RPCS: dict[str, Callable[[Target, Any], grpc.StatusCode]] = {}


def _unary(name: str) -> Callable[[Target, Any], grpc.StatusCode]:
    def call(target: Target, request: Any) -> grpc.StatusCode:
        try:
            getattr(mta_grpc.MtaServiceStub(target.mta_channel), name)(request, timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()
            return code

    return call


@pytest.mark.parametrize(
    ("name", "strategy"),
    [
        ("SetScenario", messages(mta.SetScenarioRequest)),
        ("GetOutcomes", messages(mta.GetOutcomesRequest)),
        ("Exchange", st.lists(messages(mta.ExchangeRequest), min_size=1, max_size=4)),
    ],
)
def test_mta_stub_garbage(target: Target, name: str, strategy: st.SearchStrategy[Any]) -> None:
    call = _exchange if name == "Exchange" else _unary(name)

    @settings(
        max_examples=100,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=strategy)
    def run(request: Any) -> None:
        code = call(target, request)
        target.tried[name] = target.tried.get(name, 0) + 1
        assert code not in FORBIDDEN, f"{name} answered {code} to {request}"
        if code != grpc.StatusCode.OK:
            target.refused[name] = target.refused.get(name, 0) + 1

    run()
    # The stub must still be sane afterwards: garbage scenarios are refused, not kept.
    _unary("SetScenario")(target, mta.SetScenarioRequest())


def test_total_requests(target: Target) -> None:
    total = sum(target.tried.values())
    print(f"generated bad-input requests: {total} tried, {sum(target.refused.values())} refused")
    assert total >= 2000
