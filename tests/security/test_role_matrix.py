"""Every RPC of the delivery service's process (DeliveryService and AdminService),
generated from the descriptors, called with no token,
an unknown token, an operator holding every role but the one it needs, and one holding
only that role: UNAUTHENTICATED, UNAUTHENTICATED, PERMISSION_DENIED, and past the check."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from delivery.v1 import admin_service_pb2 as apb
from delivery.v1 import admin_service_pb2_grpc as apb_grpc
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc

from delivery_service import admin, authorization
from delivery_service.domain.roles import Role
from tests.conftest import Servers
from tests.support.callers import bearer
from tests.support.processes import create_operator

# RPC name -> (its method descriptor, the client stub class, the module of its messages).
RPCS: dict[str, tuple[Any, Any, Any]] = {
    m.name: (m, stub, module)
    for module, service, stub in (
        (pb, "DeliveryService", pb_grpc.DeliveryServiceStub),
        (apb, "AdminService", apb_grpc.AdminServiceStub),
    )
    for m in module.DESCRIPTOR.services_by_name[service].methods
}
AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


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
    if name == "CreateRecurringDelivery":
        request.confirm_before_send = True
    return request


def code_of(target: Target, name: str, metadata: Any) -> grpc.StatusCode:
    descriptor, stub, _ = RPCS[name]
    method = getattr(stub(target.channel), name)
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


def role_of(name: str) -> str:
    rule = authorization.DELIVERY_SERVICE[f"/{RPCS[name][0].containing_service.full_name}/{name}"]
    assert isinstance(rule, Role)
    return str(rule)


@pytest.mark.parametrize("name", sorted(RPCS))
def test_each_rpc_needs_its_role(target: Target, name: str) -> None:
    role = role_of(name)
    assert code_of(target, name, None) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(target, name, bearer("not-a-token")) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(target, name, target.all_but[role]) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(target, name, target.only[role]) not in AUTH_CODES


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
