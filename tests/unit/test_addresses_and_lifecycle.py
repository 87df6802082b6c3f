from __future__ import annotations

import pytest

from delivery_service.domain import addresses, lifecycle
from delivery_service.domain.lifecycle import ApprovalStep, State

DELIVERABLE = [
    "a@example.com",
    "first.last+tag@sub.example.org",
    "o'hara@example.co.uk",
    "x" * 70 + "@" + "b" * 63 + ".com",  # the local part's length is not the domain's
    "a@x." + "c" * 63,
    "a@a-b.co",
]
UNDELIVERABLE = [
    "a@b",
    "a..b@example.com",
    ".a@example.com",
    "a@-x.com",
    "a@x-.com",
    "a@example.c",
    "a@@b.com",
    "a@" + "b" * 64 + ".com",  # a label of 64
    "a@x." + "c" * 64,  # a top-level domain of 64
    "a@b.c0m",
]
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


# 64 + 1 + 189 characters: the longest address SMTP allows, with labels of at most 63.
LONGEST = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"


def test_254_characters_is_the_limit() -> None:
    assert len(LONGEST) == addresses.MAX_ADDRESS_LENGTH == 254
    assert addresses.is_deliverable(LONGEST)
    assert addresses.malformation(LONGEST) is None
    too_long = LONGEST.replace("@", "@e")
    assert not addresses.is_deliverable(too_long)
    assert addresses.malformation(too_long) == "must be at most 254 characters"


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("", "must not be empty"),
        ("a b@example.com", "must not contain spaces or control characters"),
        ("a@ex\x00ample.com", "must not contain spaces or control characters"),
        ("no-at-sign", "must be an address of the form local@domain"),
        ("@example.com", "must be an address of the form local@domain"),
        # The domain is what follows the last '@'.
        ("a@b@", "must be an address of the form local@domain"),
    ],
)
def test_malformations_say_what_is_wrong(address: str, problem: str) -> None:
    assert addresses.malformation(address) == problem


def test_only_a_draft_can_be_prepared() -> None:
    lifecycle.check_prepare(State.DRAFT)
    for state in State:
        if state is not State.DRAFT:
            with pytest.raises(
                lifecycle.TransitionError,
                match=rf"^delivery is {state}; only a DRAFT delivery can be prepared$",
            ):
                lifecycle.check_prepare(state)


def test_approving_after_the_send_is_refused() -> None:
    required = [ApprovalStep.TARGET]
    for state in (State.SENDING, State.SENT, State.FINISHED, State.STOPPED, State.DRAFT):
        with pytest.raises(
            lifecycle.TransitionError,
            match=rf"^delivery is {state}; only a PREPARED delivery can be approved$",
        ):
            lifecycle.approve(state, required, [ApprovalStep.TARGET], ApprovalStep.TARGET)


def test_approving_a_step_again_while_prepared_stores_it_once() -> None:
    required = [ApprovalStep.TARGET, ApprovalStep.CONTENT]
    state, done = lifecycle.approve(
        State.PREPARED, required, [ApprovalStep.TARGET], ApprovalStep.TARGET
    )
    assert (state, done) == (State.PREPARED, [ApprovalStep.TARGET])


def test_refusals_say_why() -> None:
    with pytest.raises(
        lifecycle.TransitionError,
        match=r"^delivery does not require the approval step CONTENT$",
    ):
        lifecycle.approve(State.PREPARED, [ApprovalStep.TARGET], [], ApprovalStep.CONTENT)
    with pytest.raises(
        lifecycle.TransitionError,
        match=r"^delivery is PREPARED; only an APPROVED delivery can be sent$",
    ):
        lifecycle.check_confirm(State.PREPARED)
    with pytest.raises(
        lifecycle.TransitionError,
        match=r"^delivery is FINISHED; a FINISHED delivery cannot be stopped$",
    ):
        lifecycle.check_stop(State.FINISHED)
