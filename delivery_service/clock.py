"""The service's clock: every wall-clock time the service reads for a rule or writes comes
from here, passed to SQL as a value (Citus refuses now() where a statement mixes it with
columns, and the database's clock is not the service's), so that every process and every
test reads time through one seam. A test steps it in a running process with
`--clock-offset-file` (grpc_common.clock); durations (the grace after a validity, timeouts,
sleeps) are measured on the monotonic clock, which does not step."""

from __future__ import annotations

import datetime as dt

from grpc_common import clock

_latest = 0.0  # the latest wall-clock time read in this process


def now() -> dt.datetime:
    """The wall clock: it may step back or forward, as a host's does."""
    global _latest
    seconds = clock.time()
    _latest = max(_latest, seconds)
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def latest() -> dt.datetime:
    """The latest wall-clock time this process has read (now, unless its clock stepped
    back since): what a check that something is "not in the future" compares with, so
    that a backward step does not turn what happened before it into the future."""
    now()
    return dt.datetime.fromtimestamp(_latest, dt.UTC)
