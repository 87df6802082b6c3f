"""The lifecycle of a delivery: DRAFT → PREPARED → APPROVED → SENDING → SENT → FINISHED."""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    DRAFT = "DRAFT"
    PREPARED = "PREPARED"
    APPROVED = "APPROVED"
    SENDING = "SENDING"
    SENT = "SENT"
    FINISHED = "FINISHED"
    STOPPED = "STOPPED"


class ApprovalStep(enum.StrEnum):
    TARGET = "TARGET"
    CONTENT = "CONTENT"


class TransitionError(Exception):
    """The delivery is not in a state that allows the change."""


# Confirming a delivery that is already past APPROVED is a repeat, answered unchanged.
CONFIRMED = frozenset({State.SENDING, State.SENT, State.FINISHED})


def after_preparation(required: list[ApprovalStep]) -> State:
    """A prepared delivery that needs no approval step is approved at once."""
    return State.PREPARED if required else State.APPROVED


def check_prepare(state: State) -> None:
    if state is not State.DRAFT:
        raise TransitionError(f"delivery is {state}; only a DRAFT delivery can be prepared")


def approve(
    state: State, required: list[ApprovalStep], done: list[ApprovalStep], step: ApprovalStep
) -> tuple[State, list[ApprovalStep]]:
    """Records one approval step; returns the new state and the steps done."""
    if state is State.APPROVED and step in done:
        return state, done
    if state is not State.PREPARED:
        raise TransitionError(f"delivery is {state}; only a PREPARED delivery can be approved")
    if step not in required:
        raise TransitionError(f"delivery does not require the approval step {step}")
    steps = done if step in done else [*done, step]
    return (State.APPROVED if set(required) <= set(steps) else State.PREPARED), steps


def check_confirm(state: State) -> bool:
    """True if the send must start now; False if it was confirmed before (a repeat)."""
    if state in CONFIRMED:
        return False
    if state is not State.APPROVED:
        raise TransitionError(f"delivery is {state}; only an APPROVED delivery can be sent")
    return True


def check_stop(state: State) -> None:
    """Any state before FINISHED can be stopped; stopping a stopped delivery is a repeat."""
    if state is State.FINISHED:
        raise TransitionError(f"delivery is {state}; a FINISHED delivery cannot be stopped")
