from __future__ import annotations

import pytest

from delivery_service.domain import addresses, lifecycle
from delivery_service.domain.lifecycle import ApprovalStep, State

DELIVERABLE = ["a@example.com", "first.last+tag@sub.example.org", "o'hara@example.co.uk"]
UNDELIVERABLE = ["a@b", "a..b@example.com", ".a@example.com", "a@-x.com", "a@example.c", "a@@b.com"]
MALFORMED = [
    "",
    "no-at-sign",
    "@example.com",
    "a@",
    "a b@example.com",
    "a@ex\x00ample.com",
    "x" * 255,
]


@pytest.mark.parametrize("address", DELIVERABLE)
def test_deliverable(address: str) -> None:
    assert addresses.is_deliverable(address)
    assert addresses.malformation(address) is None


@pytest.mark.parametrize("address", UNDELIVERABLE)
def test_undeliverable_but_accepted(address: str) -> None:
    assert not addresses.is_deliverable(address)


@pytest.mark.parametrize("address", MALFORMED)
def test_malformed(address: str) -> None:
    assert addresses.malformation(address) is not None


def test_approval_steps() -> None:
    required = [ApprovalStep.TARGET, ApprovalStep.CONTENT]
    assert lifecycle.after_preparation(required) is State.PREPARED
    assert lifecycle.after_preparation([]) is State.APPROVED
    state, done = lifecycle.approve(State.PREPARED, required, [], ApprovalStep.TARGET)
    assert (state, done) == (State.PREPARED, [ApprovalStep.TARGET])
    state, done = lifecycle.approve(state, required, done, ApprovalStep.CONTENT)
    assert state is State.APPROVED
    # Approving a step again once approved is a repeat, not an error.
    assert lifecycle.approve(state, required, done, ApprovalStep.CONTENT)[0] is State.APPROVED
    with pytest.raises(lifecycle.TransitionError):
        lifecycle.approve(State.DRAFT, required, [], ApprovalStep.TARGET)
    with pytest.raises(lifecycle.TransitionError):
        lifecycle.approve(State.PREPARED, [ApprovalStep.TARGET], [], ApprovalStep.CONTENT)


def test_confirm_and_stop() -> None:
    assert lifecycle.check_confirm(State.APPROVED) is True
    for repeat in (State.SENDING, State.SENT, State.FINISHED):
        assert lifecycle.check_confirm(repeat) is False
    for refused in (State.DRAFT, State.PREPARED, State.STOPPED):
        with pytest.raises(lifecycle.TransitionError):
            lifecycle.check_confirm(refused)
    lifecycle.check_stop(State.SENDING)
    lifecycle.check_stop(State.STOPPED)
    with pytest.raises(lifecycle.TransitionError):
        lifecycle.check_stop(State.FINISHED)
