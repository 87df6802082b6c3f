"""A gRPC call made by hand over HTTP/2 (h2), for what gRPC's own clients refuse to send:
metadata with a newline or other bytes an HTTP/2 header may not hold, as an attacker's
client would send them anyway. Plaintext, to a server on this machine."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events


@dataclass(frozen=True)
class RawAnswer:
    """What came back: the headers and trailers, and the response message if any."""

    headers: dict[str, str]
    message: bytes

    @property
    def status(self) -> int:
        """The grpc-status code (0 is OK)."""
        return int(self.headers["grpc-status"])


def unary_call(
    host: str,
    port: int,
    method: str,
    request: bytes,
    metadata: Sequence[tuple[str, bytes]] = (),
    timeout: float = 10.0,
) -> RawAnswer:
    """Calls `method` (`/package.Service/Method`) with the serialized `request` and the
    metadata as given, unchecked; returns once the server ends the stream."""
    config = h2.config.H2Configuration(
        client_side=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    connection = h2.connection.H2Connection(config)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        connection.initiate_connection()
        headers: list[tuple[str, str | bytes]] = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", f"{host}:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        connection.send_headers(1, headers)
        framed = b"\x00" + len(request).to_bytes(4, "big") + request
        connection.send_data(1, framed, end_stream=True)
        sock.sendall(connection.data_to_send())
        got: dict[str, str] = {}
        body = b""
        ended = False
        while not ended:
            data = sock.recv(65536)
            if not data:
                break
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    got.update(_decoded(event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            sock.sendall(connection.data_to_send())
    return RawAnswer(got, body[5:])


def _decoded(headers: Sequence[tuple[bytes | str, bytes | str]] | None) -> dict[str, str]:
    def text(value: bytes | str) -> str:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    return {text(k): text(v) for k, v in headers or ()}
