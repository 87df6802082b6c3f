"""Every bad field of a request at once: the Checks collector, Invalid's list of
violations and its message, and the request checks that report all of their fields."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import timestamp_pb2

from delivery_service import admin
from delivery_service import validation as v
from delivery_service.validation import Checks, Invalid
from tests.unit.test_validation import request

# Built untyped: the filters below hold numbers no enum has.
Filter: Callable[..., adpb.AddressFilter] = adpb.AddressFilter


def violations(check: object, *args: object) -> list[tuple[str, str]]:
    with pytest.raises(Invalid) as info:
        check(*args)  # type: ignore[operator]
    error = info.value
    assert error.violations[0] == (error.field, error.description)
    assert error.unlisted == 0
    return list(error.violations)


def refuse(field: str, description: str = "bad") -> None:
    raise Invalid(field, description)


# --- Invalid ------------------------------------------------------------------------------


def test_one_violation_is_its_own_message() -> None:
    error = Invalid("label", "required")
    assert (error.violations, error.unlisted, str(error)) == (
        (("label", "required"),),
        0,
        "label: required",
    )


def test_more_violations_are_named_after_the_first() -> None:
    error = Invalid("label", "required", ("content.body", "required"), ("view", "bad"))
    assert (error.field, error.description) == ("label", "required")
    assert error.violations == (
        ("label", "required"),
        ("content.body", "required"),
        ("view", "bad"),
    )
    assert str(error) == "label: required (and 2 more invalid fields: content.body, view)"


def test_unlisted_violations_are_counted_in_the_message() -> None:
    error = Invalid("a", "x", ("b", "y"), unlisted=3)
    assert error.unlisted == 3
    assert str(error) == "a: x (and 4 more invalid fields: b, ...)"
    assert str(Invalid("a", "x", unlisted=1)) == "a: x (and 1 more invalid fields: ...)"


def test_descriptions_are_cut_to_200_characters() -> None:
    assert Invalid("a", "d" * 200).description == "d" * 200
    long = Invalid("a", "d" * 201, ("b", "e" * 1000))
    assert long.description == "d" * 199 + "\u2026"
    assert long.violations[1] == ("b", "e" * 199 + "\u2026")
    assert str(long).startswith("a: " + "d" * 199 + "\u2026 (and 1 more")


# --- Checks -------------------------------------------------------------------------------


def test_checks_pass_results_through_and_raise_nothing_when_all_pass() -> None:
    with Checks() as check:
        assert check(v.page_size, "page_size", 0) == v.DEFAULT_PAGE_SIZE
        assert check(v.text, "label", "x", 10, required=False) == "x"


def test_checks_refuse_every_violation_in_the_order_found() -> None:
    with pytest.raises(Invalid) as info, Checks() as check:
        assert check(v.positive_id, "delivery_id", 0) is None
        assert check(v.page_size, "page_size", 5) == 5
        check.fail("view", "unknown")
        assert check(v.page_size, "page_size", -1) is None
    assert info.value.violations == (
        ("delivery_id", "required: a positive id"),
        ("view", "unknown"),
        ("page_size", "must not be negative"),
    )
    assert info.value.unlisted == 0


def test_an_invalid_raised_in_the_block_joins_the_ones_before_it() -> None:
    with pytest.raises(Invalid) as info, Checks() as check:
        check(refuse, "a")
        refuse("b", "direct")
    assert info.value.violations == (("a", "bad"), ("b", "direct"))


def test_any_other_error_in_the_block_goes_through_as_it_is() -> None:
    failure = ValueError("bug")
    with pytest.raises(ValueError) as info, Checks() as check:
        check(refuse, "a")
        raise failure
    assert info.value is failure


def test_at_most_20_violations_are_listed_and_the_rest_counted() -> None:
    assert v.MAX_VIOLATIONS == 20
    for count, unlisted in ((20, 0), (21, 1), (25, 5)):
        with pytest.raises(Invalid) as info, Checks() as check:
            for i in range(count):
                check(refuse, f"f{i}")
        assert [f for f, _ in info.value.violations] == [f"f{i}" for i in range(20)]
        assert info.value.unlisted == unlisted
        assert str(info.value).endswith(", ...)") is (unlisted > 0)


def test_nested_checks_add_up_their_violations_and_counts() -> None:
    def inner(count: int, unlisted: int = 0) -> None:
        raise Invalid("in", "x", *[("in", "x")] * (count - 1), unlisted=unlisted)

    with pytest.raises(Invalid) as info, Checks() as check:
        check(refuse, "first")
        check(inner, 15)
        check(inner, 10, 2)
    assert len(info.value.violations) == 20
    assert info.value.violations[:2] == (("first", "bad"), ("in", "x"))
    assert info.value.unlisted == (1 + 15 + 10 - 20) + 2


# --- requests with several bad fields ---------------------------------------------------


def test_a_delivery_with_three_bad_fields_gets_three_violations() -> None:
    bad = request(label="", feedback_mode=None, validity_period=None)
    assert violations(v.new_delivery, bad) == [
        ("label", "required"),
        ("feedback_mode", "required: one of 1, 2"),
        ("validity_period", "required"),
    ]
    with pytest.raises(Invalid) as info:
        v.new_delivery(bad)
    assert str(info.value) == (
        "label: required (and 2 more invalid fields: feedback_mode, validity_period)"
    )


def test_a_delivery_without_content_or_target_names_both() -> None:
    bad = request(content=None, target=None, request_id="r\x00")
    assert violations(v.new_delivery, bad) == [
        ("content", "required"),
        ("target", "required"),
        ("request_id", "must not contain NUL characters"),
    ]


def test_every_bad_part_of_the_content_is_named() -> None:
    links = ["ftp://x"] + ["https://example.com"] * 99 + ["ftp://over-the-limit"]
    bad = pb.Content(subject="two\nlines", body="", links=links)
    assert violations(v.content, "content", bad) == [
        ("content.subject", "must be one line"),
        ("content.body", "required"),
        ("content.links", "must have at most 100 links"),
        ("content.links[0]", "must be an http or https URL"),
    ]


def test_every_bad_recipient_is_named() -> None:
    target = pb.Target(
        recipients=pb.RecipientList(
            recipients=[
                pb.Recipient(email="no-at-sign"),
                pb.Recipient(email="a@example.com"),
                pb.Recipient(),
                pb.Recipient(profile_id=""),
            ]
        )
    )
    found = violations(v.target, "target", target)
    assert [f for f, _ in found] == [
        "target.recipients.recipients[0].email",
        "target.recipients.recipients[2]",
        "target.recipients.recipients[3].profile_id",
    ]


def test_approval_steps_name_every_bad_one() -> None:
    assert violations(v.approval_steps, "steps", [9, 1, 1, 0]) == [
        ("steps[0]", "required: one of 1, 2"),
        ("steps[2]", "TARGET is named twice"),
        ("steps[3]", "required: one of 1, 2"),
    ]


def test_every_bad_profile_and_field_is_named() -> None:
    profiles = [
        pb.Profile(profile_id="", email="bad", segments=["s" * 101]),
        pb.Profile(profile_id="p1", segments=["s"] * 21),
        pb.Profile(profile_id="p1"),
        pb.Profile(profile_id=""),
    ]
    assert [f for f, _ in violations(v.profiles, profiles)] == [
        "profiles[0].profile_id",
        "profiles[0].email",
        "profiles[0].segments[0]",
        "profiles[1].segments",
        "profiles[2].profile_id",
        "profiles[3].profile_id",
    ]
    assert violations(v.profiles, profiles)[-2:] == [
        ("profiles[2].profile_id", "'p1' is named twice"),
        ("profiles[3].profile_id", "required"),
    ]


def test_roles_name_each_unknown_role_and_a_repeat() -> None:
    found = violations(v.roles, "roles", ["nobody", "admin", "admin", "x"], admin.ROLES)
    assert [f for f, _ in found] == ["roles[0]", "roles[3]", "roles"]
    assert found[2] == ("roles", "names a role twice")


def test_an_address_filter_names_every_bad_field() -> None:
    bad = Filter(
        statuses=[99, adpb.ADDRESS_STATUS_VALID, adpb.ADDRESS_STATUS_VALID],
        failure_reason=999,
        error_text="   ",
        changed_after=timestamp_pb2.Timestamp(seconds=100),
        changed_before=timestamp_pb2.Timestamp(seconds=50),
        domain="not a domain",
    )
    allowed = frozenset(v.ADDRESS_STATUSES.values())
    assert [f for f, _ in violations(v.address_filter, "filter", bad, allowed)] == [
        "filter.statuses[0]",
        "filter.statuses[2]",
        "filter.failure_reason",
        "filter.error_text",
        "filter.changed_before",
        "filter.domain",
    ]


def test_a_bad_time_in_a_filter_is_named_without_comparing_it() -> None:
    bad = Filter(
        changed_after=timestamp_pb2.Timestamp(seconds=-(10**13)),
        changed_before=timestamp_pb2.Timestamp(seconds=50),
    )
    allowed = frozenset(v.ADDRESS_STATUSES.values())
    assert violations(v.address_filter, "filter", bad, allowed) == [
        ("filter.changed_after", "is not a valid timestamp")
    ]
