"""gRPC's C core writes log lines of its own, straight to stderr and in its own format
(`E1201 13:57:59.652 ... add_port.cc:83] Failed to add port`): in JSON mode they would be
the only lines that are not JSON. The core reads GRPC_VERBOSITY once, when grpc is
imported, so each server's main calls this before it imports grpc.

What the core would say of a failure, the servers say too, in their own lines (a port that
cannot be bound is `cannot listen on ...`, a peer that went away a CANCELLED RPC line). An
operator who wants the core's lines anyway sets GRPC_VERBOSITY: that is kept.
"""

from __future__ import annotations

import os


def quiet_in_json(as_json: bool) -> None:
    """In JSON mode, the core's own log lines off (unless GRPC_VERBOSITY says otherwise)."""
    if as_json:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
