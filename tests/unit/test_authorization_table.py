"""The authorization table covers every RPC of both services, from their descriptors: a
new RPC without an entry fails here (and is refused by the service at run time)."""

from __future__ import annotations

from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import admin_service_pb2 as apb
from delivery.v1 import delivery_service_pb2 as pb
from grpc_health.v1 import health_pb2
from mta.v1 import mta_service_pb2 as mta

from delivery_service import authorization
from delivery_service.domain.roles import Role


def methods(descriptor: object, service: str) -> set[str]:
    svc = descriptor.services_by_name[service]  # type: ignore[attr-defined]
    return {f"/{svc.full_name}/{m.name}" for m in svc.methods}


HEALTH = methods(health_pb2.DESCRIPTOR, "Health")


DELIVERY_RPCS = (
    methods(pb.DESCRIPTOR, "DeliveryService")
    | methods(apb.DESCRIPTOR, "AdminService")
    | methods(adpb.DESCRIPTOR, "AddressService")
)


def test_every_rpc_of_the_delivery_service_has_an_entry() -> None:
    rpcs = DELIVERY_RPCS
    assert rpcs <= set(authorization.DELIVERY_SERVICE)
    assert all(isinstance(authorization.DELIVERY_SERVICE[r], Role) for r in rpcs)
    assert all(authorization.DELIVERY_SERVICE[h] == authorization.OPEN for h in HEALTH)


def test_every_rpc_of_the_stub_has_an_entry() -> None:
    rpcs = methods(mta.DESCRIPTOR, "MtaService")
    assert rpcs <= set(authorization.MTA_STUB)
    assert all(authorization.MTA_STUB[r] != authorization.OPEN for r in rpcs)


def test_the_table_names_no_rpc_that_does_not_exist() -> None:
    reflection = {
        f"/grpc.reflection.{v}.ServerReflection/ServerReflectionInfo" for v in ("v1alpha", "v1")
    }
    known = DELIVERY_RPCS | HEALTH | reflection
    assert set(authorization.DELIVERY_SERVICE) == known
    assert (
        set(authorization.MTA_STUB) == methods(mta.DESCRIPTOR, "MtaService") | HEALTH | reflection
    )


def test_reading_deliveries_needs_its_role_since_it_reveals_addresses() -> None:
    table = authorization.DELIVERY_SERVICE
    for name in ("GetDelivery", "ListDeliveries", "WatchDeployment", "GetKpis", "ListSendingLogs"):
        assert table[f"/delivery.v1.DeliveryService/{name}"] is Role.READ_DELIVERIES
