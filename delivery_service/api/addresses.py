"""The AddressService servicer: what the service has learnt of each address, and the
changes operators make by hand (reading: read_deliveries; changing: manage_profiles, see
delivery_service/authorization.py)."""

from __future__ import annotations

from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import address_service_pb2_grpc as adpb_grpc

from delivery_service import authorization, validation
from delivery_service.api import convert, errors
from delivery_service.api.errors import Context
from delivery_service.domain import quarantine as q
from delivery_service.store.connection import Database
from delivery_service.usecases import addresses


class AddressServicer(adpb_grpc.AddressServiceServicer):
    def __init__(self, db: Database, rules: q.Rules = q.DEFAULT_RULES) -> None:
        self.db = db
        self.rules = rules

    @errors.unary
    async def ListAddresses(
        self, request: adpb.ListAddressesRequest, context: Context
    ) -> adpb.ListAddressesResponse:
        with validation.Checks() as check:
            where = check(
                validation.address_filter,
                "filter",
                request.filter,
                frozenset(validation.ADDRESS_STATUSES.values()),
            )
            limit = check(validation.page_size, "page_size", request.page_size)
        # A token resumes only the listing of the same filter: checked once it is good.
        scope = f"ListAddresses:{where!r}"
        after = validation.keyset_token("page_token", request.page_token, scope)
        page = await addresses.page(self.db, where, after, limit)
        positions = []
        for name, state in page:
            assert state.update_time is not None  # listed entries have changed
            positions.append((state.update_time, name))
        return adpb.ListAddressesResponse(
            addresses=[convert.address(name, state) for name, state in page],
            next_page_token=validation.next_keyset_token(positions, limit, scope),
        )

    @errors.unary
    async def GetAddress(
        self, request: adpb.GetAddressRequest, context: Context
    ) -> adpb.GetAddressResponse:
        name = validation.email("address", request.address).lower()
        return adpb.GetAddressResponse(
            address=convert.address(name, await addresses.get(self.db, name))
        )

    @errors.unary
    async def SetAddressStatus(
        self, request: adpb.SetAddressStatusRequest, context: Context
    ) -> adpb.SetAddressStatusResponse:
        with validation.Checks() as check:
            address = check(validation.email, "address", request.address)
            status = check(validation.address_status, "status", request.status, validation.SETTABLE)
        name = address.lower()
        operator = authorization.current_operator.get().name
        state = await addresses.set_status(self.db, name, status, operator, self.rules)
        return adpb.SetAddressStatusResponse(address=convert.address(name, state))

    @errors.unary
    async def ReleaseAddresses(
        self, request: adpb.ReleaseAddressesRequest, context: Context
    ) -> adpb.ReleaseAddressesResponse:
        where = validation.release_filter(request)
        released = await addresses.release_matching(
            self.db,
            where,
            dry_run=request.dry_run,
            operator=authorization.current_operator.get().name,
            rules=self.rules,
        )
        return adpb.ReleaseAddressesResponse(released=released)
