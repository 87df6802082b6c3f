"""Input hygiene, as an attacker's client would try it: request ids that would forge or
flood log lines, errors that must still say which request they were, bytes that are not
UTF-8 where the proto says string, and text that hides or reorders what people read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from mta.v1 import mta_service_pb2 as mta

from delivery_service import validation
from grpc_common import observability
from tests.integration import flows
from tests.integration.conftest import Pair
from tests.support.callers import interceptors
from tests.support.processes import ServerProcess, wait_until
from tests.support.raw_http2 import unary_call

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
CREATE = "/delivery.v1.DeliveryService/CreateDelivery"
GENERATED_ID = re.compile(r"[0-9a-f]{16}")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def rpc_lines(process: ServerProcess, method: str) -> list[str]:
    assert process.log_path is not None
    text = process.log_path.read_text(encoding="utf-8")
    return [line for line in text.splitlines() if f" rpc {method} " in line]


def one_more_line(process: ServerProcess, method: str, before: int) -> list[str]:
    """The RPC lines of `method` once there is one more than `before`; exactly one more."""
    wait_until(
        lambda: len(rpc_lines(process, method)) > before, 10, message=f"no log line of {method}"
    )
    lines = rpc_lines(process, method)
    assert len(lines) == before + 1, lines[before:]
    return lines


# --- request ids -------------------------------------------------------------------------

FORGED = "2026-01-01 00:00:00,000 INFO delivery_service.rpc [admin] rpc /forged OK 0.1ms"


@pytest.mark.parametrize(
    "sent",
    [
        b"ok\n" + FORGED.encode(),  # a newline: a whole forged line
        b"ok\r" + FORGED.encode(),
        b"x" * 7000,  # a flood
        b"ok\x1b[2J",  # a terminal escape
        "d\u00e9j\u00e0".encode(),  # not even ASCII
        b"x" * 129,  # one character too many
    ],
    ids=["newline", "carriage-return", "7000-chars", "escape", "utf8", "129-chars"],
)
def test_a_request_id_that_could_forge_or_flood_a_log_line_is_replaced(
    module_pair: Pair, sent: bytes
) -> None:
    for process in (module_pair.service, module_pair.stub_process):
        before = len(rpc_lines(process, HEALTH_CHECK))
        request = health_pb2.HealthCheckRequest().SerializeToString()
        answer = unary_call(
            "127.0.0.1", process.port, HEALTH_CHECK, request, [("x-request-id", sent)]
        )
        assert answer.status == 0
        # A generated id comes back instead, and the call is one log line under it.
        returned = answer.headers["x-request-id"]
        assert GENERATED_ID.fullmatch(returned), returned
        lines = one_more_line(process, HEALTH_CHECK, before)
        assert f"[{returned}] rpc {HEALTH_CHECK} OK" in lines[-1]
        assert process.log_path is not None
        log = process.log_path.read_text(encoding="utf-8")
        assert "/forged" not in log and "x" * 129 not in log


def test_a_good_request_id_is_kept(module_pair: Pair) -> None:
    good = "Req-1.a_b:c" + "9" * 117  # 128 characters of the allowed ones
    for process in (module_pair.service, module_pair.stub_process):
        request = health_pb2.HealthCheckRequest().SerializeToString()
        answer = unary_call(
            "127.0.0.1", process.port, HEALTH_CHECK, request, [("x-request-id", good.encode())]
        )
        assert answer.headers["x-request-id"] == good


def request_id_back(error: grpc.aio.AioRpcError) -> str | None:
    ids = [v for k, v in error.trailing_metadata() or () if k == observability.REQUEST_ID_KEY]
    return ids[0] if ids else None


async def failed(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value


async def test_the_request_id_comes_back_on_errors(module_pair: Pair) -> None:
    rid = [("x-request-id", "trace-42")]
    bad_label = flows.request(["a@example.com"], label="")
    cases = [
        # A checked request's refusal, with its rich details in the trailers too.
        (module_pair.api.CreateDelivery(bad_label, metadata=rid, timeout=10), INVALID),
        (
            module_pair.api.GetDelivery(
                pb.GetDeliveryRequest(delivery_id=999_999), metadata=rid, timeout=10
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            module_pair.anonymous.GetKpis(
                pb.GetKpisRequest(delivery_id=1), metadata=rid, timeout=10
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (
            module_pair.mta.GetOutcomes(
                mta.GetOutcomesRequest(delivery_id=-1), metadata=rid, timeout=10
            ),
            INVALID,
        ),
    ]
    for call, code in cases:
        error = await failed(call)
        assert error.code() == code
        assert request_id_back(error) == "trace-42", error


# --- invalid UTF-8 on the wire -----------------------------------------------------------

NOT_UTF8 = b"\xc3\x28\xa0\xa1"  # an invalid two-byte sequence, then two lone continuations
MARK = "\u00a7MRK"  # 5 bytes: the spot to put the bad bytes in (with one byte around them)


def not_utf8(message: Message) -> bytes:
    """`message` serialized with the one string that holds MARK made invalid UTF-8."""
    raw = message.SerializeToString()
    assert raw.count(MARK.encode()) == 1
    return raw.replace(MARK.encode(), b"x" + NOT_UTF8)


def field_violation(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    """The BadRequest detail's one field violation."""
    details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    status = status_pb2.Status.FromString(details)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    (violation,) = bad_request.field_violations
    return violation.field, violation.description


def with_mark(change: Callable[[pb.CreateDeliveryRequest], None]) -> pb.CreateDeliveryRequest:
    request = flows.request(["a@example.com", "b@example.com", "c@example.com"])
    request.content.links.append("https://example.com/b")
    change(request)
    return request


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: setattr(r, "label", MARK), "label"),
        (lambda r: setattr(r.content, "subject", MARK), "content.subject"),
        (lambda r: r.content.links.__setitem__(1, MARK), "content.links[1]"),
        (
            lambda r: setattr(r.target.recipients.recipients[2], "email", MARK),
            "target.recipients.recipients[2].email",
        ),
    ],
    ids=["label", "subject", "link", "address"],
)
async def test_invalid_utf8_in_a_delivery_request_is_invalid_argument(
    module_pair: Pair, change: Callable[[pb.CreateDeliveryRequest], None], field: str
) -> None:
    raw = not_utf8(with_mark(change))
    rid = "utf8-" + re.sub(r"[^A-Za-z0-9._:-]", "-", field)
    async with grpc.aio.insecure_channel(
        module_pair.service.address, interceptors=interceptors(module_pair.caller)
    ) as channel:
        create = channel.unary_unary(CREATE)
        error = await failed(create(raw, metadata=[("x-request-id", rid)], timeout=10))
    assert error.code() == INVALID
    assert error.details() == f"{field}: must be valid UTF-8"
    assert field_violation(error) == (field, "must be valid UTF-8")
    assert request_id_back(error) == rid

    # The status goes out before the line is written: wait for it.
    def logged() -> bool:
        lines = rpc_lines(module_pair.service, CREATE)
        return any(f"[{rid}]" in line and "INVALID_ARGUMENT" in line for line in lines)

    wait_until(logged, 10, message=f"no INVALID_ARGUMENT line for request {rid}")


async def test_invalid_utf8_is_invalid_argument_on_both_servers_and_on_a_stream(
    module_pair: Pair,
) -> None:
    raw_check = not_utf8(health_pb2.HealthCheckRequest(service=MARK))
    for process in (module_pair.service, module_pair.stub_process):
        async with grpc.aio.insecure_channel(process.address) as channel:
            error = await failed(channel.unary_unary(HEALTH_CHECK)(raw_check, timeout=10))
        assert (error.code(), error.details()) == (INVALID, "service: must be valid UTF-8")

    async with grpc.aio.insecure_channel(module_pair.stub_process.address) as channel:
        outcomes = channel.unary_unary("/mta.v1.MtaService/GetOutcomes")
        error = await failed(outcomes(not_utf8(mta.GetOutcomesRequest(client_id=MARK))))
        assert (error.code(), error.details()) == (INVALID, "client_id: must be valid UTF-8")
        # On the feedback stream: the stream ends there, INVALID_ARGUMENT naming the field.
        exchange = channel.stream_stream("/mta.v1.MtaService/Exchange")
        hello = mta.ExchangeRequest(hello=mta.Hello(client_id="utf8")).SerializeToString()
        relay = mta.ExchangeRequest(
            relay=mta.RelayBatch(seq=1, delivery_id=1, messages=[mta.Message(email=MARK)])
        )
        call = exchange(iter([hello, not_utf8(relay)]), timeout=10)
        assert await call.code() == INVALID
        assert await call.details() == "relay.messages[0].email: must be valid UTF-8"


async def test_bytes_that_are_no_message_at_all_are_invalid_argument_too(
    module_pair: Pair,
) -> None:
    async with grpc.aio.insecure_channel(
        module_pair.service.address, interceptors=interceptors(module_pair.caller)
    ) as channel:
        truncated = b"\x0a\x05ab"  # label: 5 bytes announced, 2 sent
        error = await failed(channel.unary_unary(CREATE)(truncated, timeout=10))
    assert error.code() == INVALID
    assert error.details() == "request: is not a well-formed delivery.v1.CreateDeliveryRequest"


# --- text that hides or reorders what people read ----------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "code_point"),
    [
        (lambda r: setattr(r, "label", "invoice\u202egnp.exe"), "label", "U+202E"),
        (lambda r: setattr(r, "label", "a\u2066b\u2069"), "label", "U+2066"),
        (lambda r: setattr(r, "label", "a\u200fb"), "label", "U+200F"),
        (lambda r: setattr(r, "label", "bell\x07"), "label", "U+0007"),
        (lambda r: setattr(r, "label", "a\x85b"), "label", "U+0085"),
        (lambda r: setattr(r.content, "subject", "Hi\u202d"), "content.subject", "U+202D"),
        (lambda r: setattr(r.content, "subject", "tab\there"), "content.subject", "U+0009"),
    ],
)
async def test_control_and_bidi_characters_in_labels_and_subjects_are_refused(
    module_pair: Pair,
    change: Callable[[pb.CreateDeliveryRequest], None],
    field: str,
    code_point: str,
) -> None:
    request = flows.request(["a@example.com"])
    change(request)
    error = await failed(module_pair.api.CreateDelivery(request, timeout=10))
    assert error.code() == INVALID
    assert (error.details() or "").startswith(f"{field}: ")
    assert code_point in (error.details() or "")
    assert field_violation(error)[0] == field


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("HTTPS://Example.com/A?x=1#f", "https://Example.com/A?x=1#f"),
        ("  https://example.com/a \u3000", "https://example.com/a"),
        # Full-width letters are letters once normalised (NFKC).
        ("\uff48\uff54\uff54\uff50\uff53://example.com/\u00e9", "https://example.com/\u00e9"),
    ],
)
def test_links_are_stored_as_normalised(given: str, stored: str) -> None:
    assert validation.link("content.links[0]", given) == stored


@pytest.mark.parametrize(
    ("given", "description"),
    [
        ("https://user:secret@example.com/", "must not carry credentials (user:password@)"),
        ("https://user@example.com/", "must not carry credentials (user:password@)"),
        ("https://:443/a", "must be an http or https URL"),
        ("javascript:alert(1)", "must be an http or https URL"),
        ("\uff4a\uff41\uff56\uff41script:alert(1)", "must be an http or https URL"),
        ("https://example.com:99999/", "is not a valid URL"),
        ("https://example.com/a b", "must not contain spaces or control characters"),
        ("https://example.com/a\u0085b", "must not contain spaces or control characters"),
        ("https://example.com/" + "\ufdfa" * 120, "must be at most 2048 characters once"),
    ],
)
def test_links_are_checked_after_normalisation(given: str, description: str) -> None:
    with pytest.raises(validation.Invalid) as refused:
        validation.link("content.links[3]", given)
    assert refused.value.field == "content.links[3]"
    assert refused.value.description.startswith(description)


# --- the log itself ----------------------------------------------------------------------


def test_a_text_log_line_stays_one_line_whatever_its_message(tmp_path: Path) -> None:
    formatter = observability.TextFormatter(observability.TEXT_FORMAT)
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "stream opened by %s", ("a\nb\r\u2028c\x1b",), None
    )
    record.request_id = "-"
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    assert line.endswith("stream opened by a\\nb\\r\\u2028c\\x1b")
