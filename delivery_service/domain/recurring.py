"""A recurring delivery's own lifecycle: ACTIVE ⇄ PAUSED → CANCELLED."""

from __future__ import annotations

import enum

from delivery_service.domain.lifecycle import TransitionError


class RecurringState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    CANCELLED = "CANCELLED"


class Control(enum.StrEnum):
    PAUSE = "PAUSE"
    RESUME = "RESUME"
    CANCEL = "CANCEL"


# What each control leads to, and from which states; reaching the state a recurring
# delivery is already in is a repeat, answered unchanged.
_TARGET = {
    Control.PAUSE: RecurringState.PAUSED,
    Control.RESUME: RecurringState.ACTIVE,
    Control.CANCEL: RecurringState.CANCELLED,
}


def after(state: RecurringState, control: Control) -> RecurringState:
    """The state a control leads to; TransitionError if it cannot apply."""
    target = _TARGET[control]
    if state is target:
        return state
    if state is RecurringState.CANCELLED:
        raise TransitionError("the recurring delivery is CANCELLED; it cannot be changed")
    return target


def on_behalf_of(creator: str | None) -> str:
    """Who an occurrence that sends unattended is confirmed by: the scheduler, on the
    authority of the operator who created the recurring delivery."""
    return f"scheduler for {creator}" if creator else "scheduler"
