"""The stub's clock: every wall-clock time it reads for a rule (a message's acceptance and
first step, when scheduled steps are due) comes from here, so that a test can step it in a
running stub (`--clock-offset-file`, grpc_common.clock). Events carry the time their step
was scheduled for, so a step changes when steps fire, not the times they report."""

from __future__ import annotations

from grpc_common import clock


def time() -> float:
    """Seconds since the epoch, as the stub's (possibly stepped) wall clock says."""
    return clock.time()
