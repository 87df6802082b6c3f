"""A counting bug must not hide behind a recount.

The end of a delivery's validity (and ComputeStats) recounts every counter from the
logs and repairs any that drifted, logging "counters had drifted": the final figures
would then be right even if the live counting were wrong. Tests that run deliveries
through the service check its log for that line.
"""

from __future__ import annotations

from pathlib import Path


def assert_no_drift(logs: list[Path | None]) -> None:
    """No recount in these delivery-service logs had to repair a counter."""
    for path in logs:
        assert path is not None
        assert "counters had drifted" not in path.read_text(), f"drift repaired, see {path}"
