"""Operators with a lifecycle (bootstrap, create, rotate, revoke, expire) through the
AdminService, and the audit trail of every state-changing call."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path
from typing import Any

import grpc
import pytest
from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import address_service_pb2_grpc as adpb_grpc
from delivery.v1 import admin_service_pb2 as apb
from delivery.v1 import admin_service_pb2_grpc as apb_grpc
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from google.protobuf import timestamp_pb2

from delivery_service import audit
from tests.conftest import Servers
from tests.support.callers import bearer
from tests.support.processes import await_until


def code(error: BaseException) -> grpc.StatusCode:
    assert isinstance(error, grpc.aio.AioRpcError)
    return error.code()


async def outcome(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_the_first_admin_needs_no_database_and_operators_have_a_lifecycle(
    fresh_db_url: str, servers: Servers, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin.token"
    pair = servers.pair(fresh_db_url, service_args=["--bootstrap-token-file", str(token_file)])
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token not in pair.service.log_tail(200), "a token never appears in the log"
    root = bearer(token)
    async with grpc.aio.insecure_channel(pair.service.address) as channel:
        admin = apb_grpc.AdminServiceStub(channel)
        api = pb_grpc.DeliveryServiceStub(channel)
        created = await admin.CreateOperator(
            apb.CreateOperatorRequest(name="alice", roles=["read_deliveries"]),
            metadata=root,
            timeout=10,
        )
        alice = bearer(created.token)
        read = pb.GetDeliveryRequest(delivery_id=999)
        assert await outcome(api.GetDelivery(read, metadata=alice, timeout=10)) == (
            grpc.StatusCode.NOT_FOUND
        )
        # A non-admin cannot manage operators.
        listing = apb.ListOperatorsRequest()
        assert await outcome(admin.ListOperators(listing, metadata=alice, timeout=10)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        rotated = await admin.RotateOperatorToken(
            apb.RotateOperatorTokenRequest(name="alice"), metadata=root, timeout=10
        )
        fresh = bearer(rotated.token)

        async def refused(metadata: list[tuple[str, str]]) -> bool:
            got = await outcome(api.GetDelivery(read, metadata=metadata, timeout=10))
            return got == grpc.StatusCode.UNAUTHENTICATED

        # Within the 2 s a process believes a looked-up token.
        await await_until(lambda: refused(alice), 10, message="the old token refused")
        assert not await refused(fresh)
        revoked = await admin.RevokeOperator(
            apb.RevokeOperatorRequest(name="alice"), metadata=root, timeout=10
        )
        assert revoked.operator.HasField("revoke_time")
        await await_until(lambda: refused(fresh), 10, message="the revoked token refused")
        with pytest.raises(grpc.aio.AioRpcError) as rotate_revoked:
            await admin.RotateOperatorToken(
                apb.RotateOperatorTokenRequest(name="alice"), metadata=root, timeout=10
            )
        assert code(rotate_revoked.value) == grpc.StatusCode.FAILED_PRECONDITION
        expire = timestamp_pb2.Timestamp()
        expire.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3))
        brief = await admin.CreateOperator(
            apb.CreateOperatorRequest(name="brief", roles=["read_deliveries"], expire_time=expire),
            metadata=root,
            timeout=10,
        )
        assert not await refused(bearer(brief.token))
        await await_until(lambda: refused(bearer(brief.token)), 15, message="expired token")
        names = await admin.ListOperators(listing, metadata=root, timeout=10)
        assert [o.name for o in names.operators] == ["admin", "alice", "brief"]
        with pytest.raises(grpc.aio.AioRpcError) as bad_role:
            await admin.CreateOperator(
                apb.CreateOperatorRequest(name="bob", roles=["root"]), metadata=root, timeout=10
            )
        assert code(bad_role.value) == grpc.StatusCode.INVALID_ARGUMENT
        assert "roles[0]" in (bad_role.value.details() or "")
    # A second start with the file present creates no second admin.
    pair.service.terminate(10)
    again = servers.delivery_service(
        fresh_db_url, pair.stub.address, "--bootstrap-token-file", str(token_file)
    )
    async with grpc.aio.insecure_channel(again.address) as channel:
        names = await apb_grpc.AdminServiceStub(channel).ListOperators(
            apb.ListOperatorsRequest(), metadata=root, timeout=10
        )
    assert [o.name for o in names.operators].count("admin") == 1


AUDITED = sorted(audit.AUDITED)


async def test_every_state_change_is_audited_with_who_what_and_how_it_ended(
    fresh_db_url: str, servers: Servers, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin.token"
    pair = servers.pair(fresh_db_url, service_args=["--bootstrap-token-file", str(token_file)])
    root = bearer(token_file.read_text().strip())
    async with grpc.aio.insecure_channel(pair.service.address) as channel:
        admin = apb_grpc.AdminServiceStub(channel)
        everyone = [
            "read_deliveries", "manage_profiles", "create_deliveries", "approve_deliveries",
            "start_deliveries", "compute_stats", "admin",
        ]  # fmt: skip
        caller = bearer(
            (
                await admin.CreateOperator(
                    apb.CreateOperatorRequest(name="carol", roles=everyone),
                    metadata=root,
                    timeout=10,
                )
            ).token
        )
        stubs: dict[str, Any] = {
            "DeliveryService": pb_grpc.DeliveryServiceStub(channel),
            "AdminService": admin,
            "AddressService": adpb_grpc.AddressServiceStub(channel),
        }
        modules = {"DeliveryService": pb, "AdminService": apb, "AddressService": adpb}
        for method in AUDITED:
            _, full_name, name = method.split("/")
            service = full_name.rsplit(".", 1)[1]
            request = getattr(modules[service], f"{name}Request")()
            rid = [("x-request-id", f"audit-{name}")]
            await outcome(getattr(stubs[service], name)(request, metadata=caller + rid, timeout=10))
        # A refused attempt is audited too, with who was refused.
        await outcome(
            stubs["DeliveryService"].ConfirmSend(
                pb.ConfirmSendRequest(delivery_id=1), metadata=bearer("nobody's"), timeout=10
            )
        )
        wanted = {f"audit-{m.rsplit('/', 1)[1]}" for m in AUDITED}

        async def whole_trail() -> Any:
            events = (
                await admin.ListAuditEvents(
                    apb.ListAuditEventsRequest(page_size=1000), metadata=root, timeout=10
                )
            ).events
            return events if wanted <= {e.request_id for e in events} else None

        # A refusal's status goes out as the servicer aborts, before its audit line is
        # written (grpc.aio sends it from `abort`): the line follows within moments.
        events = await await_until(whole_trail, 10, message="audit lines missing")
    by_request = {e.request_id: e for e in events}
    for method in AUDITED:
        name = method.rsplit("/", 1)[1]
        event = by_request[f"audit-{name}"]
        assert (event.operator, event.method) == ("carol", method)
        # Empty requests: refused for what they lack, after the caller was known.
        assert event.code == "INVALID_ARGUMENT", (name, event.code)
        assert event.peer and event.time.seconds > 0
    refused = [e for e in events if e.method.endswith("/ConfirmSend") and e.operator == ""]
    assert [(e.code, e.target) for e in refused] == [("UNAUTHENTICATED", "delivery 1")]
    # Reads are not audited.
    assert not any(e.method.endswith("/ListAuditEvents") for e in events)


def test_the_audit_trail_is_append_only(fresh_db_url: str) -> None:
    import psycopg

    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO audit_events (time, operator, method, target, code, request_id, peer)"
            " VALUES (now(), 'a', 'm', 't', 'OK', 'r', 'p')"
        )
        for statement in ("UPDATE audit_events SET code = 'x'", "DELETE FROM audit_events",
                          "TRUNCATE audit_events"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.encode())
        assert conn.execute("SELECT count(*) FROM audit_events").fetchone() == (1,)
