"""Log lines of both servers: RFC 3339 times, a failed RPC's status message bounded and
escaped, the listening line in JSON mode."""

from __future__ import annotations

import json
import logging
import re

import grpc

from grpc_common import observability as obs

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class Context:
    def __init__(self, details: str | bytes | None) -> None:
        self._details = details

    def details(self) -> str | bytes | None:
        return self._details


def record(message: str = "hello", created: float = 1_796_133_479.652) -> logging.LogRecord:
    made = logging.LogRecord("x.rpc", logging.INFO, __file__, 1, message, None, None)
    made.created = created
    made.request_id = "rid-1"
    return made


def test_times_are_rfc_3339_in_utc_to_the_millisecond() -> None:
    assert obs.rfc3339(1_796_133_479.652) == "2026-12-01T13:57:59.652Z"
    assert obs.rfc3339(0) == "1970-01-01T00:00:00.000Z"


def test_text_and_json_lines_carry_the_time() -> None:
    text = obs.TextFormatter(obs.TEXT_FORMAT).format(record())
    assert text == "2026-12-01T13:57:59.652Z INFO x.rpc [rid-1] hello"
    line = json.loads(obs.JsonFormatter().format(record()))
    assert (line["time"], line["request_id"], line["message"]) == (
        "2026-12-01T13:57:59.652Z",
        "rid-1",
        "hello",
    )


def test_an_ok_call_has_no_details() -> None:
    assert obs._details(Context("ignored"), grpc.StatusCode.OK, None) == ""


def test_a_failed_call_has_its_status_message_escaped_and_bounded() -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert obs._details(Context("label: required"), invalid, None) == "label: required"
    assert obs._details(Context(b"bytes \xff"), invalid, None) == "bytes \ufffd"
    forged = "x\n2026-12-01T00:00:00.000Z INFO forged\u202e\x1b[31m"
    assert obs._details(Context(forged), invalid, None) == (
        "x\\n2026-12-01T00:00:00.000Z INFO forged\\u202e\\x1b[31m"
    )
    cut = obs._details(Context("d" * 1000), invalid, None)
    assert cut == "d" * (obs.MAX_LOGGED_DETAILS - 1) + "\u2026"
    assert obs._details(Context(None), grpc.StatusCode.CANCELLED, None) == ""


def test_a_bug_is_logged_with_its_exception() -> None:
    unknown = grpc.StatusCode.UNKNOWN
    error = KeyError("k")
    assert obs._details(Context(None), unknown, error) == "KeyError: 'k'"
    assert obs._details(Context("given"), unknown, error) == "given"
    assert obs._details(Context(None), unknown, None) == ""


def test_the_listening_line_is_json_in_json_mode() -> None:
    assert obs.stdout_line("listening on h:1", False, "x") == "listening on h:1"
    line = json.loads(obs.stdout_line("listening on h:1", True, "grpc_common.serving"))
    assert (line["message"], line["logger"], line["level"], line["request_id"]) == (
        "listening on h:1",
        "grpc_common.serving",
        "INFO",
        "-",
    )
    assert RFC3339.fullmatch(line["time"])
