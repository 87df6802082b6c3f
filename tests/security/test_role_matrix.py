"""Every RPC of the delivery service's process (DeliveryService, AdminService and
AddressService), generated from the descriptors, called with no token,
an unknown token, an operator holding every role but the one it needs, and one holding
only that role: UNAUTHENTICATED, UNAUTHENTICATED, PERMISSION_DENIED, and past the check.

The matrix fails for any method of any service the process serves (as its reflection
says) that it does not call, and for any entry of the authorization table it does not."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import address_service_pb2_grpc as adpb_grpc
from delivery.v1 import admin_service_pb2 as apb
from delivery.v1 import admin_service_pb2_grpc as apb_grpc
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from delivery_service import admin, authorization
from delivery_service.domain.roles import Role
from tests.conftest import Servers
from tests.support.callers import bearer
from tests.support.processes import create_operator

# "Service/Method" -> (its method descriptor, the client stub class, the module of its
# messages). Keyed by service too: two services may name a method alike.
RPCS: dict[str, tuple[Any, Any, Any]] = {
    f"{service}/{m.name}": (m, stub, module)
    for module, service, stub in (
        (pb, "DeliveryService", pb_grpc.DeliveryServiceStub),
        (apb, "AdminService", apb_grpc.AdminServiceStub),
        (adpb, "AddressService", adpb_grpc.AddressServiceStub),
    )
    for m in module.DESCRIPTOR.services_by_name[service].methods
}
AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# Open to every caller: not in the matrix.
OPEN_SERVICES = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
# The roles some RPCs need, said here as well as in the table, each checked against
# every role: reading the address table and the alerts reveals addresses and deliveries'
# figures, as the deliveries' reads do; changing entries changes who preparation targets.
ONE_ROLE = {
    "AddressService/ListAddresses": "read_deliveries",
    "AddressService/GetAddress": "read_deliveries",
    "AddressService/SetAddressStatus": "manage_profiles",
    "AddressService/ReleaseAddresses": "manage_profiles",
    "DeliveryService/ListAlerts": "read_deliveries",
    # Who a delivery sends to is decided with the delivery.
    "DeliveryService/AddRecipients": "create_deliveries",
    # The event feed carries every recipient's address and what happened to the message.
    "DeliveryService/ListDeliveryEvents": "read_deliveries",
    "DeliveryService/WatchDeliveryEvents": "read_deliveries",
    "DeliveryService/GetMessageTimeline": "read_deliveries",
}


@dataclass
class Target:
    channel: grpc.Channel
    only: dict[str, list[tuple[str, str]]]  # role -> an operator holding just it
    all_but: dict[str, list[tuple[str, str]]]  # role -> an operator holding every other


@pytest.fixture(scope="module")
def target(module_db_url: str, module_servers: Servers) -> Iterator[Target]:
    pair = module_servers.pair(module_db_url)
    only = {r: bearer(create_operator(module_db_url, f"only-{r}", r)) for r in admin.ROLES}
    all_but = {
        r: bearer(create_operator(module_db_url, f"not-{r}", *(o for o in admin.ROLES if o != r)))
        for r in admin.ROLES
    }
    with grpc.insecure_channel(pair.service.address) as channel:
        yield Target(channel, only, all_but)


def request_for(name: str) -> Any:
    """An empty request of the RPC; a recurring delivery that waits for confirmation, so
    that create_deliveries alone is enough for it."""
    method, _, module = RPCS[name]
    request = getattr(module, method.input_type.name)()
    if name == "DeliveryService/CreateRecurringDelivery":
        request.confirm_before_send = True
    return request


def code_of(target: Target, name: str, metadata: Any) -> grpc.StatusCode:
    descriptor, stub, _ = RPCS[name]
    method = getattr(stub(target.channel), descriptor.name)
    try:
        if descriptor.server_streaming:
            stream = method(request_for(name), metadata=metadata, timeout=10)
            next(stream)
            stream.cancel()
        else:
            method(request_for(name), metadata=metadata, timeout=10)
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()
        return code
    return grpc.StatusCode.OK


def path_of(name: str) -> str:
    """`/delivery.v1.DeliveryService/GetKpis`: the method as gRPC and the table name it."""
    method = RPCS[name][0]
    return f"/{method.containing_service.full_name}/{method.name}"


def role_of(name: str) -> str:
    rule = authorization.DELIVERY_SERVICE[path_of(name)]
    assert isinstance(rule, Role)
    return str(rule)


def reflect(channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest) -> Any:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return response


def served_methods(channel: grpc.Channel) -> set[str]:
    """Every method of every service the process serves but the open ones, as its
    reflection describes them (not as this test's generated code does)."""
    listed = reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    services = {s.name for s in listed.list_services_response.service} - OPEN_SERVICES
    methods = set()
    for service in services:
        found = reflect(
            channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
        )
        for raw in found.file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for s in file.service:
                if f"{file.package}.{s.name}" == service:
                    methods |= {f"/{service}/{m.name}" for m in s.method}
    return methods


@pytest.mark.parametrize("name", sorted(RPCS))
def test_each_rpc_needs_its_role(target: Target, name: str) -> None:
    role = role_of(name)
    assert code_of(target, name, None) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(target, name, bearer("not-a-token")) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(target, name, target.all_but[role]) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(target, name, target.only[role]) not in AUTH_CODES


def test_the_matrix_covers_every_method_the_process_serves(target: Target) -> None:
    """A method served (as reflection describes it) or in the table, but left out of
    RPCS, would go untested: the matrix calls exactly the methods served, which are
    exactly the table's entries that need a role."""
    called = {path_of(name) for name in RPCS}
    served = served_methods(target.channel)
    assert "/delivery.v1.DeliveryService/ListAlerts" in served
    assert served - called == set(), "served but never called by the matrix"
    assert called - served == set(), "called by the matrix but not served"
    table = {
        rpc for rpc, rule in authorization.DELIVERY_SERVICE.items() if rule != authorization.OPEN
    }
    assert table == called


@pytest.mark.parametrize("name", sorted(ONE_ROLE))
def test_these_rpcs_need_their_one_role_and_no_other(target: Target, name: str) -> None:
    assert role_of(name) == ONE_ROLE[name]
    allowed = ONE_ROLE[name]
    assert code_of(target, name, None) == grpc.StatusCode.UNAUTHENTICATED
    for role in admin.ROLES:
        got = code_of(target, name, target.only[role])
        if role == allowed:
            assert got not in AUTH_CODES, (name, role, got)
        else:
            assert got == grpc.StatusCode.PERMISSION_DENIED, (name, role, got)


def test_a_recurring_delivery_that_sends_unattended_also_needs_start_deliveries(
    target: Target, module_db_url: str
) -> None:
    unattended = pb.CreateRecurringDeliveryRequest(confirm_before_send=False)
    api = pb_grpc.DeliveryServiceStub(target.channel)
    with pytest.raises(grpc.RpcError) as refused:
        api.CreateRecurringDelivery(unattended, metadata=target.only["create_deliveries"])
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "start_deliveries" in (refused.value.details() or "")
    both = bearer(
        create_operator(
            module_db_url, "creates-and-starts", "create_deliveries", "start_deliveries"
        )
    )
    with pytest.raises(grpc.RpcError) as checked:
        api.CreateRecurringDelivery(unattended, metadata=both, timeout=10)
    # Past authorization: the empty request itself is what is refused.
    assert checked.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_stays_open(target: Target) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    response = health_pb2_grpc.HealthStub(target.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING
