"""The admin's gRPC servicer: operators and the audit trail (role admin, see
delivery_service/authorization.py)."""

from __future__ import annotations

from delivery.v1 import admin_service_pb2 as apb
from delivery.v1 import admin_service_pb2_grpc as apb_grpc

from delivery_service import admin, clock, validation
from delivery_service.api import convert, errors
from delivery_service.api.errors import Context
from delivery_service.store.connection import Database
from delivery_service.store.records import OperatorEntry
from delivery_service.usecases import operators

_LAST = 2**63 - 1


def operator_pb(entry: OperatorEntry) -> apb.Operator:
    return apb.Operator(
        name=entry.name,
        roles=entry.roles,
        create_time=convert.timestamp(entry.create_time),
        expire_time=convert.timestamp(entry.expire_time),
        revoke_time=convert.timestamp(entry.revoke_time),
    )


class AdminServicer(apb_grpc.AdminServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db

    @errors.unary
    async def CreateOperator(
        self, request: apb.CreateOperatorRequest, context: Context
    ) -> apb.CreateOperatorResponse:
        expire = None
        with validation.Checks() as check:
            name = check(validation.operator_name, "name", request.name)
            roles = check(validation.roles, "roles", list(request.roles), admin.ROLES)
            if request.HasField("expire_time"):
                expire = check(
                    validation.future_time, "expire_time", request.expire_time, clock.now()
                )
        entry, token = await operators.create(self.db, name, roles, expire)
        return apb.CreateOperatorResponse(operator=operator_pb(entry), token=token)

    @errors.unary
    async def ListOperators(
        self, request: apb.ListOperatorsRequest, context: Context
    ) -> apb.ListOperatorsResponse:
        with validation.Checks() as check:
            limit = check(validation.page_size, "page_size", request.page_size)
            after = check(
                validation.page_token, "page_token", request.page_token, 0, "ListOperators"
            )
        page = await operators.page(self.db, after, limit)
        return apb.ListOperatorsResponse(
            operators=[operator_pb(e) for e in page],
            next_page_token=validation.next_page_token(
                [e.id for e in page], limit, "ListOperators"
            ),
        )

    @errors.unary
    async def RevokeOperator(
        self, request: apb.RevokeOperatorRequest, context: Context
    ) -> apb.RevokeOperatorResponse:
        name = validation.operator_name("name", request.name)
        return apb.RevokeOperatorResponse(
            operator=operator_pb(await operators.revoke(self.db, name))
        )

    @errors.unary
    async def RotateOperatorToken(
        self, request: apb.RotateOperatorTokenRequest, context: Context
    ) -> apb.RotateOperatorTokenResponse:
        name = validation.operator_name("name", request.name)
        entry, token = await operators.rotate(self.db, name)
        return apb.RotateOperatorTokenResponse(operator=operator_pb(entry), token=token)

    @errors.unary
    async def ListAuditEvents(
        self, request: apb.ListAuditEventsRequest, context: Context
    ) -> apb.ListAuditEventsResponse:
        who = request.operator
        scope = f"ListAuditEvents:{who}"
        with validation.Checks() as check:
            limit = check(validation.page_size, "page_size", request.page_size)
            before = check(validation.page_token, "page_token", request.page_token, _LAST, scope)
        page = await operators.audit_page(self.db, before=before, operator=who, limit=limit)
        return apb.ListAuditEventsResponse(
            events=[
                apb.AuditEvent(
                    id=e.id,
                    time=convert.timestamp(e.time),
                    operator=e.operator,
                    method=e.method,
                    target=e.target,
                    code=e.code,
                    request_id=e.request_id,
                    peer=e.peer,
                )
                for e in page
            ],
            next_page_token=validation.next_page_token([e.id for e in page], limit, scope),
        )
