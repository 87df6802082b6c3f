"""Who may confirm a send, and confirming twice never sends twice."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest
from delivery.v1 import delivery_service_pb2 as pb
from mta.v1 import mta_service_pb2 as mta

from tests.integration import flows
from tests.integration.conftest import Pair

EMAILS = [f"user{i}@example.com" for i in range(50)]


async def approved(pair: Pair) -> pb.Delivery:
    return await flows.create_and_approve(
        pair,
        flows.request(EMAILS, approvals=[pb.APPROVAL_STEP_TARGET, pb.APPROVAL_STEP_CONTENT]),
    )


async def confirm_code(
    pair: Pair, delivery_id: int, metadata: list[tuple[str, str]] | None
) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pair.anonymous.ConfirmSend(
            pb.ConfirmSendRequest(delivery_id=delivery_id), metadata=metadata, timeout=30
        )
    return err.value.code()


async def test_no_token_is_unauthenticated(pair: Pair) -> None:
    delivery = await approved(pair)
    assert await confirm_code(pair, delivery.id, None) == grpc.StatusCode.UNAUTHENTICATED
    bogus = [("authorization", "Bearer not-a-token")]
    assert await confirm_code(pair, delivery.id, bogus) == grpc.StatusCode.UNAUTHENTICATED


async def test_no_role_is_permission_denied(pair: Pair) -> None:
    delivery = await approved(pair)
    assert await confirm_code(pair, delivery.id, pair.nobody) == grpc.StatusCode.PERMISSION_DENIED
    # Approving is a different role from sending.
    assert await confirm_code(pair, delivery.id, pair.approver) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pair.api.ApproveDelivery(
            pb.ApproveDeliveryRequest(delivery_id=delivery.id, step=pb.APPROVAL_STEP_TARGET),
            metadata=pair.sender,
            timeout=30,
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_not_approved_is_failed_precondition(pair: Pair) -> None:
    req = flows.request(EMAILS, approvals=[pb.APPROVAL_STEP_TARGET, pb.APPROVAL_STEP_CONTENT])
    created = await pair.api.CreateDelivery(req, timeout=30)
    assert await confirm_code(pair, created.delivery.id, pair.sender) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    await pair.api.PrepareDelivery(pb.PrepareDeliveryRequest(delivery_id=created.delivery.id))
    await pair.api.ApproveDelivery(
        pb.ApproveDeliveryRequest(delivery_id=created.delivery.id, step=pb.APPROVAL_STEP_TARGET),
        metadata=pair.approver,
    )
    # One of two approval steps is not enough.
    assert await confirm_code(pair, created.delivery.id, pair.sender) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert pair.sql("SELECT count(*) FROM sending_logs WHERE relay_time IS NOT NULL") == [(0,)]


async def outcomes(pair: Pair, delivery_id: int) -> mta.GetOutcomesResponse:
    return await pair.mta.GetOutcomes(mta.GetOutcomesRequest(delivery_id=delivery_id), timeout=10)


async def test_confirmed_twice_sends_once(pair: Pair) -> None:
    delivery = await approved(pair)
    request = pb.ConfirmSendRequest(delivery_id=delivery.id)
    first = await pair.api.ConfirmSend(request, metadata=pair.sender, timeout=30)
    second = await pair.api.ConfirmSend(request, metadata=pair.sender, timeout=30)
    assert first.delivery.state == second.delivery.state == pb.STATE_SENDING
    assert first.delivery.confirm_time == second.delivery.confirm_time
    await flows.wait_state(pair, delivery.id, pb.STATE_SENT)
    again = await pair.api.ConfirmSend(request, metadata=pair.sender, timeout=30)
    assert again.delivery.state in (pb.STATE_SENT, pb.STATE_FINISHED)
    got = await outcomes(pair, delivery.id)
    assert (got.accepted, got.duplicates) == (len(EMAILS), 0)


async def test_confirmed_concurrently_sends_once(pair: Pair) -> None:
    delivery = await approved(pair)
    request = pb.ConfirmSendRequest(delivery_id=delivery.id)
    answers = await asyncio.gather(
        *(pair.api.ConfirmSend(request, metadata=pair.sender, timeout=30) for _ in range(20))
    )
    assert {a.delivery.confirm_time.ToNanoseconds() for a in answers} == {
        answers[0].delivery.confirm_time.ToNanoseconds()
    }
    await flows.wait_state(pair, delivery.id, pb.STATE_SENT)
    await flows.wait_relayed(pair, delivery.id)
    got = await outcomes(pair, delivery.id)
    assert (got.accepted, got.duplicates) == (len(EMAILS), 0)
    (count,) = pair.sql("SELECT count(*) FROM sending_logs WHERE delivery_id = %s", delivery.id)
    assert count == (len(EMAILS),)


def test_create_operator_command_prints_a_working_token(fresh_db_url: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "delivery_service", "create-operator", "alice",
         "--role", "start_deliveries", "--database-url", fresh_db_url],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    token = run.stdout.strip().splitlines()[-1]
    assert len(token) >= 40
    # The token is stored only as a hash.
    again = subprocess.run(
        [sys.executable, "-m", "delivery_service", "create-operator", "alice",
         "--database-url", fresh_db_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode != 0
    assert "already exists" in again.stderr
    import psycopg

    with psycopg.connect(fresh_db_url) as conn:
        stored = conn.execute("SELECT token_hash FROM operators WHERE name = 'alice'").fetchone()
    assert stored is not None and token.encode() not in bytes(stored[0])
