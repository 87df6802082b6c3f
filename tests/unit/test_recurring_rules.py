"""A recurring delivery's own lifecycle, and on whose authority its occurrences run."""

from __future__ import annotations

import pytest

from delivery_service.domain.lifecycle import TransitionError
from delivery_service.domain.recurring import Control, RecurringState, after, on_behalf_of

ACTIVE, PAUSED, CANCELLED = RecurringState.ACTIVE, RecurringState.PAUSED, RecurringState.CANCELLED


@pytest.mark.parametrize(
    ("state", "control", "expected"),
    [
        (ACTIVE, Control.PAUSE, PAUSED),
        (PAUSED, Control.PAUSE, PAUSED),
        (PAUSED, Control.RESUME, ACTIVE),
        (ACTIVE, Control.RESUME, ACTIVE),
        (ACTIVE, Control.CANCEL, CANCELLED),
        (PAUSED, Control.CANCEL, CANCELLED),
        (CANCELLED, Control.CANCEL, CANCELLED),
    ],
)
def test_controls(state: RecurringState, control: Control, expected: RecurringState) -> None:
    assert after(state, control) is expected


@pytest.mark.parametrize("control", [Control.PAUSE, Control.RESUME])
def test_a_cancelled_one_stays_cancelled(control: Control) -> None:
    with pytest.raises(TransitionError, match="CANCELLED"):
        after(CANCELLED, control)


def test_occurrences_run_on_their_creators_authority() -> None:
    assert on_behalf_of("alice") == "scheduler for alice"
    assert on_behalf_of(None) == "scheduler"
    assert on_behalf_of("") == "scheduler"
