"""Wall-clock time for both servers' rules, through one seam a test can step.

A host's clock steps (an operator, NTP correcting a large offset, a virtual machine
resumed): wall-clock time jumps forwards or backwards, monotonic time does not. A test
cannot step the host's clock, so each server reads wall-clock time here (the delivery
service through `delivery_service.clock`, the stub through `mta_stub.clock`): the host's
time plus an offset, 0 unless `--clock-offset-file PATH` names a file whose content, a
number of seconds (`-600`, `600.5`; empty or missing: 0), is the offset. The file is read
again at most every POLL_SECONDS, on a reading of the clock, so a test steps a running
process's clock by rewriting the file; each step is logged at WARNING. The setting is a
test's: off by default, and refused by a server listening beyond loopback
(grpc_common.settings).

Monotonic time (asyncio's sleeps and timeouts, time.monotonic) is not offset: as on a
real host, only the wall clock steps.
"""

from __future__ import annotations

import logging
import math
import time as _time
from pathlib import Path

log = logging.getLogger(__name__)

# How often the offset file is read again, at most.
POLL_SECONDS = 0.05

_path: Path | None = None
_offset = 0.0
_read_at = -math.inf  # monotonic time of the file's last reading


def follow(path: str) -> None:
    """Takes the offset from the file at path from now on ("": none, offset 0)."""
    global _path, _offset, _read_at
    _path = Path(path) if path else None
    _offset = 0.0
    _read_at = -math.inf
    if _path is not None:
        log.warning(
            "the wall clock is offset by the seconds in %s (--clock-offset-file): a test's "
            "seam, not for production",
            _path,
        )
        _refresh(_time.monotonic())


def time() -> float:
    """Seconds since the epoch, as the (possibly stepped) wall clock says."""
    if _path is not None:
        now = _time.monotonic()
        if now - _read_at >= POLL_SECONDS:
            _refresh(now)
    return _time.time() + _offset


def offset() -> float:
    """The offset in force, in seconds."""
    return _offset


def _refresh(now: float) -> None:
    global _offset, _read_at
    _read_at = now
    assert _path is not None
    try:
        text = _path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        log.error(
            "clock offset file %s unreadable, offset kept at %+.3f s: %s", _path, _offset, exc
        )
        return
    try:
        value = float(text) if text else 0.0
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        log.error("clock offset file %s holds %r, not seconds: offset kept at %+.3f s",
                  _path, text[:40], _offset)  # fmt: skip
        return
    if value != _offset:
        log.warning("wall clock stepped by %+.3f s (offset now %+.3f s)", value - _offset, value)
        _offset = value
