"""The AddressService as an attacker's client would try it: bytes that are not UTF-8 in
an address or a filter, filter text that would be a pattern or SQL elsewhere, a forged
page token, and a flood of an address in a refused change (its audit line stays short)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import grpc
import pytest
from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import address_service_pb2_grpc as adpb_grpc
from delivery.v1 import admin_service_pb2 as apb
from delivery.v1 import admin_service_pb2_grpc as apb_grpc
from google.protobuf.message import Message

from delivery_service import admin, audit
from tests.integration.conftest import Pair
from tests.support.callers import bearer, interceptors

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_UTF8 = b"\xc3\x28\xa0\xa1"
MARK = "\u00a7MRK"
_AD = "/delivery.v1.AddressService/"


def not_utf8(message: Message) -> bytes:
    raw = message.SerializeToString()
    assert raw.count(MARK.encode()) == 1
    return raw.replace(MARK.encode(), b"x" + NOT_UTF8)


@pytest.fixture
async def channel(module_pair: Pair) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(
        module_pair.service.address, interceptors=interceptors(module_pair.caller)
    ) as open_channel:
        yield open_channel


async def failed(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value


@pytest.mark.parametrize(
    ("method", "message", "field"),
    [
        ("GetAddress", adpb.GetAddressRequest(address=MARK), "address"),
        (
            "SetAddressStatus",
            adpb.SetAddressStatusRequest(address=MARK, status=adpb.ADDRESS_STATUS_QUARANTINED),
            "address",
        ),
        (
            "ListAddresses",
            adpb.ListAddressesRequest(filter=adpb.AddressFilter(error_text=MARK)),
            "filter.error_text",
        ),
        (
            "ReleaseAddresses",
            adpb.ReleaseAddressesRequest(filter=adpb.AddressFilter(domain=MARK), dry_run=True),
            "filter.domain",
        ),
    ],
    ids=["get", "set", "list", "release"],
)
async def test_invalid_utf8_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, method: str, message: Message, field: str
) -> None:
    error = await failed(channel.unary_unary(_AD + method)(not_utf8(message), timeout=10))
    assert (error.code(), error.details()) == (INVALID, f"{field}: must be valid UTF-8")


async def test_filter_text_is_matched_as_text_never_as_a_pattern(
    module_pair: Pair, channel: grpc.aio.Channel
) -> None:
    book = adpb_grpc.AddressServiceStub(channel)
    await book.SetAddressStatus(
        adpb.SetAddressStatusRequest(
            address="pattern@example.com", status=adpb.ADDRESS_STATUS_QUARANTINED
        ),
        timeout=10,
    )
    for text in ("%", "_", "%' OR '1'='1", "'; DELETE FROM addresses; --", ".*", "\\"):
        for rpc, request in (
            (
                "ListAddresses",
                adpb.ListAddressesRequest(filter=adpb.AddressFilter(error_text=text)),
            ),
            (
                "ReleaseAddresses",
                adpb.ReleaseAddressesRequest(
                    filter=adpb.AddressFilter(error_text=text), dry_run=True
                ),
            ),
        ):
            answer = await getattr(book, rpc)(request, timeout=10)
            taken = len(answer.addresses) if rpc == "ListAddresses" else answer.released
            assert taken == 0, (rpc, text)
    assert module_pair.sql(
        "SELECT status FROM addresses WHERE address = %s", "pattern@example.com"
    ) == [(3,)]


async def test_a_forged_page_token_is_refused(channel: grpc.aio.Channel) -> None:
    book = adpb_grpc.AddressServiceStub(channel)
    for forged in (
        base64.urlsafe_b64encode(b"v3:1:0000000000000000:a@example.com").decode(),
        base64.urlsafe_b64encode(b"v3:99999999999999999999999:x:a@example.com").decode(),
        base64.urlsafe_b64encode(b"v2:1:0000000000000000").decode(),
        "%%%",
        "djM6MTI6",
    ):
        error = await failed(
            book.ListAddresses(adpb.ListAddressesRequest(page_token=forged), timeout=10)
        )
        assert error.code() == INVALID
        assert (error.details() or "").startswith("page_token: "), forged


async def test_a_refused_change_with_a_huge_address_is_audited_in_a_short_line(
    module_pair: Pair, channel: grpc.aio.Channel
) -> None:
    huge = "A" * 100_000 + "@example.com"
    book = adpb_grpc.AddressServiceStub(channel)
    request = adpb.SetAddressStatusRequest(address=huge, status=adpb.ADDRESS_STATUS_DENYLISTED)
    error = await failed(book.SetAddressStatus(request, metadata=module_pair.nobody, timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await failed(book.SetAddressStatus(request, timeout=10))
    assert (error.code(), error.details()) == (INVALID, "address: must be at most 254 characters")
    root = bearer(await admin.create_operator(module_pair.database_url, "auditor", ["admin"]))
    async with grpc.aio.insecure_channel(module_pair.service.address) as bare:
        trail = await apb_grpc.AdminServiceStub(bare).ListAuditEvents(
            apb.ListAuditEventsRequest(), metadata=root, timeout=10
        )
    shown = "address " + "a" * audit.MAX_SHOWN + "…"
    changes = [
        (e.operator, e.code, e.target)
        for e in trail.events
        if e.method == _AD + "SetAddressStatus" and e.target.startswith("address aaa")
    ]
    assert changes == [
        ("caller", "INVALID_ARGUMENT", shown),
        ("nobody", "PERMISSION_DENIED", shown),
    ]
