"""Request checks: the boundaries of every limit, and the field each refusal names.

The field (`Invalid.field`) is what the BadRequest detail carries back to the caller,
so every test names the exact path: `content.links[1]`, `profiles[0].segments[2]`, ...
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2

from delivery_service import validation
from delivery_service.domain import events as ev
from delivery_service.domain.feedback import FeedbackMode
from delivery_service.domain.lifecycle import ApprovalStep
from delivery_service.validation import Invalid

SECOND = dt.timedelta(seconds=1)
MICROSECOND = dt.timedelta(microseconds=1)
THIRTY_DAYS = dt.timedelta(days=30)


def refused(check: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, str]:
    """The (field, description) of the Invalid a check raises, its one violation."""
    with pytest.raises(Invalid) as info:
        check(*args, **kwargs)
    (violation,) = info.value.violations
    assert violation == (info.value.field, info.value.description)
    return violation


def test_invalid_names_its_field_in_its_message() -> None:
    error = Invalid("content.subject", "required")
    assert (error.field, error.description, str(error)) == (
        "content.subject",
        "required",
        "content.subject: required",
    )


# --- scalars --------------------------------------------------------------------------


def test_text_is_required_unless_told_otherwise() -> None:
    assert refused(validation.text, "label", "", 10) == ("label", "required")
    assert refused(validation.text, "label", " \t", 10) == ("label", "required")
    assert validation.text("request_id", "", 10, required=False) == ""
    assert validation.text("request_id", "  ", 10, required=False) == "  "
    assert validation.text("label", " x ", 10) == " x "


def test_text_length_and_nul() -> None:
    assert validation.text("label", "x" * 10, 10) == "x" * 10
    assert refused(validation.text, "label", "x" * 11, 10) == (
        "label",
        "must be at most 10 characters",
    )
    assert refused(validation.text, "label", "a\x00b", 10) == (
        "label",
        "must not contain NUL characters",
    )
    assert refused(validation.text, "id", "a\x00", 10, required=False)[0] == "id"


def test_positive_id() -> None:
    assert validation.positive_id("delivery_id", 1) == 1
    for bad in (0, -1):
        assert refused(validation.positive_id, "delivery_id", bad) == (
            "delivery_id",
            "required: a positive id",
        )


def test_email_passes_the_address_rules_reason_on() -> None:
    assert validation.email("to", "a@example.com") == "a@example.com"
    assert refused(validation.email, "to", "no-at-sign") == (
        "to",
        "must be an address of the form local@domain",
    )
    assert refused(validation.email, "to", "") == ("to", "must not be empty")


# --- durations: the validity period ---------------------------------------------------


def validity(seconds: int, nanos: int = 0) -> dt.timedelta:
    return validation.duration(
        "validity_period",
        duration_pb2.Duration(seconds=seconds, nanos=nanos),
        validation.MIN_VALIDITY,
        validation.MAX_VALIDITY,
    )


def validity_refused(seconds: int, nanos: int = 0) -> tuple[str, str]:
    return refused(validity, seconds, nanos)


BETWEEN = ("validity_period", "must be between 0:00:01 and 30 days, 0:00:00")


def test_validity_bounds_are_inclusive() -> None:
    assert validity(1) == SECOND
    assert validity(30 * 86_400) == THIRTY_DAYS
    # Just outside, by a microsecond (the finest step a timedelta keeps).
    assert validity_refused(0, 999_999_000) == BETWEEN
    assert validity_refused(30 * 86_400, 1_000) == BETWEEN
    assert validity_refused(30 * 86_400 + 1) == BETWEEN


def test_validity_keeps_fractional_seconds_to_the_microsecond() -> None:
    assert validity(1, 500_000_000) == dt.timedelta(seconds=1.5)
    assert validity(2, 1_000) == 2 * SECOND + MICROSECOND
    # Nanoseconds below a microsecond are dropped, not rounded up.
    assert validity(1, 999) == SECOND


def test_validity_is_required() -> None:
    assert validity_refused(0) == ("validity_period", "required")
    # A zero seconds field with nanos set is a (too short) duration, not a missing one.
    assert validity_refused(0, 5_000) == BETWEEN


def test_a_duration_outside_protobufs_range_is_not_a_duration() -> None:
    not_valid = ("validity_period", "is not a valid duration")
    limit = 315_576_000_000
    assert validity_refused(limit) == BETWEEN
    assert validity_refused(-limit) == BETWEEN
    assert validity_refused(limit + 1) == not_valid
    assert validity_refused(-limit - 1) == not_valid
    assert validity(1, 999_999_999) == 2 * SECOND - MICROSECOND
    assert validity_refused(1, 1_000_000_000) == not_valid
    assert validity_refused(5, -1_000_000_000) == not_valid
    assert validity(5, -999_999_999) == 4 * SECOND


def test_the_recurrence_interval_has_its_own_bounds() -> None:
    def interval(seconds: int) -> dt.timedelta:
        value = duration_pb2.Duration(seconds=seconds)
        return validation.duration(
            "interval", value, validation.MIN_INTERVAL, validation.MAX_INTERVAL
        )

    assert interval(1) == SECOND
    assert interval(366 * 86_400) == dt.timedelta(days=366)
    assert refused(interval, 366 * 86_400 + 1) == (
        "interval",
        "must be between 0:00:01 and 366 days, 0:00:00",
    )


# --- timestamps -----------------------------------------------------------------------


def at(seconds: int, nanos: int = 0) -> dt.datetime:
    value = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    return validation.timestamp("first_occurrence_time", value)


def test_timestamps_are_utc() -> None:
    got = at(1_764_000_000, 250_000_000)
    assert got == dt.datetime(2025, 11, 24, 16, 0, 0, 250_000, tzinfo=dt.UTC)
    assert got.utcoffset() == dt.timedelta(0)


def test_timestamps_span_years_1_to_9999() -> None:
    not_valid = ("first_occurrence_time", "is not a valid timestamp")
    assert at(-62_135_596_800) == dt.datetime(1, 1, 1, tzinfo=dt.UTC)
    assert at(253_402_300_799, 999_999_999) == dt.datetime(
        9999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC
    )
    assert refused(at, -62_135_596_801) == not_valid
    assert refused(at, 253_402_300_800) == not_valid
    assert refused(at, 0, -1) == not_valid
    assert refused(at, 0, 1_000_000_000) == not_valid
    assert at(0, 0) == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# --- enums, pages ---------------------------------------------------------------------


def test_enum_values_name_the_accepted_numbers() -> None:
    modes = validation.FEEDBACK_MODES
    assert validation.enum_value("feedback_mode", pb.FEEDBACK_MODE_EFS, modes) is (FeedbackMode.EFS)
    assert validation.enum_value("feedback_mode", pb.FEEDBACK_MODE_WITHOUT_EFS, modes) is (
        FeedbackMode.WITHOUT_EFS
    )
    assert refused(validation.enum_value, "feedback_mode", 0, modes) == (
        "feedback_mode",
        "required: one of 1, 2",
    )
    # Sorted, whatever the mapping's order.
    assert refused(validation.enum_value, "state", 99, {3: "c", 1: "a", 2: "b"}) == (
        "state",
        "required: one of 1, 2, 3",
    )


def test_page_size_bounds_and_default() -> None:
    assert validation.page_size("page_size", 0) == validation.DEFAULT_PAGE_SIZE == 100
    assert validation.page_size("page_size", 1) == 1
    assert validation.page_size("page_size", 1000) == 1000
    assert refused(validation.page_size, "page_size", 1001) == (
        "page_size",
        "must be at most 1000",
    )
    assert refused(validation.page_size, "page_size", -1) == (
        "page_size",
        "must not be negative",
    )


SCOPE = "ListSendingLogs:7"
# A token an earlier process issued for SCOPE at position 5: tokens outlive restarts.
ISSUED = "djI6NTo3OGE3OGZiZmY4YjIwYzAy"


def position(token: str, scope: str = SCOPE) -> int:
    return validation.page_token("page_token", token, 1, scope)


def raw_token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def test_page_tokens_carry_their_position() -> None:
    assert validation.encode_page_token(5, SCOPE) == ISSUED
    assert position(ISSUED) == 5
    assert position("") == 1
    for value in (0, 2**63 - 1):
        assert position(validation.encode_page_token(value, SCOPE)) == value


def test_page_tokens_are_bound_to_their_scope() -> None:
    assert refused(position, ISSUED, "ListSendingLogs:8") == (
        "page_token",
        "was issued for other filters: send the first page's filters",
    )


@pytest.mark.parametrize(
    "token",
    [
        "%%%",
        "djI",  # bad padding
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        raw_token("v2:5"),
        raw_token("v2:5:78a78fbff8b20c02:x"),
        raw_token("v1:5:78a78fbff8b20c02"),
        raw_token("v2:five:78a78fbff8b20c02"),
        raw_token("v2:-1:78a78fbff8b20c02"),
        raw_token(f"v2:{2**63}:78a78fbff8b20c02"),
    ],
)
def test_page_tokens_not_issued_here_are_refused(token: str) -> None:
    assert refused(position, token) == ("page_token", "is not a token this service issued")


# --- content --------------------------------------------------------------------------


def content(subject: str = "Hello X", body: str = "Body", links: list[str] | None = None) -> Any:
    value = pb.Content(subject=subject, body=body, links=links or [])
    return validation.content("content", value)


def test_content_is_returned_as_given() -> None:
    links = ["https://example.com/a", "http://example.org"]
    assert content("Hello X", "Body", links) == ("Hello X", "Body", links)


@pytest.mark.parametrize(
    ("kwargs", "field", "description"),
    [
        ({"subject": ""}, "content.subject", "required"),
        ({"subject": "s" * 999}, "content.subject", "must be at most 998 characters"),
        ({"subject": "two\nlines"}, "content.subject", "must be one line"),
        ({"subject": "two\rlines"}, "content.subject", "must be one line"),
        ({"body": " "}, "content.body", "required"),
        ({"body": "b" * ((1 << 20) + 1)}, "content.body", "must be at most 1048576 characters"),
        (
            {"links": ["https://example.com"] * 101},
            "content.links",
            "must have at most 100 links",
        ),
        ({"links": ["https://example.com", ""]}, "content.links[1]", "required"),
        (
            {"links": ["https://example.com", "https://" + "x" * 2041]},
            "content.links[1]",
            "must be at most 2048 characters",
        ),
        ({"links": ["ftp://example.com"]}, "content.links[0]", "must be an http or https URL"),
        ({"links": ["https://"]}, "content.links[0]", "must be an http or https URL"),
        ({"links": ["example.com/a"]}, "content.links[0]", "must be an http or https URL"),
    ],
)
def test_content_refusals_name_their_field(
    kwargs: dict[str, Any], field: str, description: str
) -> None:
    assert refused(content, **kwargs) == (field, description)


def test_content_limits_are_inclusive() -> None:
    subject, body = "s" * 998, "b" * (1 << 20)
    links = ["https://" + "x" * 2040] * 100
    assert content(subject, body, links) == (subject, body, links)


# --- target ---------------------------------------------------------------------------


def target(value: pb.Target) -> tuple[str | None, list[Any]]:
    return validation.target("target", value)


def recipients(*items: pb.Recipient) -> pb.Target:
    return pb.Target(recipients=pb.RecipientList(recipients=list(items)))


def test_a_segment_target() -> None:
    assert target(pb.Target(segment="vip")) == ("vip", [])
    assert refused(target, pb.Target(segment="")) == ("target.segment", "required")
    assert target(pb.Target(segment="s" * 100)) == ("s" * 100, [])
    assert refused(target, pb.Target(segment="s" * 101)) == (
        "target.segment",
        "must be at most 100 characters",
    )


def test_a_target_is_required() -> None:
    assert refused(target, pb.Target()) == ("target", "required: recipients or segment")
    assert refused(target, recipients()) == (
        "target.recipients",
        "must name at least one recipient",
    )


def test_a_recipient_list() -> None:
    segment, got = target(
        recipients(pb.Recipient(profile_id="p1"), pb.Recipient(email="a@example.com"))
    )
    assert segment is None
    assert [(r.profile_id, r.email) for r in got] == [("p1", None), (None, "a@example.com")]


@pytest.mark.parametrize(
    ("item", "field", "description"),
    [
        (pb.Recipient(), "target.recipients.recipients[1]", "required: profile_id or email"),
        (pb.Recipient(profile_id=""), "target.recipients.recipients[1].profile_id", "required"),
        (
            pb.Recipient(profile_id="p" * 201),
            "target.recipients.recipients[1].profile_id",
            "must be at most 200 characters",
        ),
        (
            pb.Recipient(email="a b@example.com"),
            "target.recipients.recipients[1].email",
            "must not contain spaces or control characters",
        ),
    ],
)
def test_recipient_refusals_name_the_recipient(
    item: pb.Recipient, field: str, description: str
) -> None:
    assert refused(target, recipients(pb.Recipient(profile_id="p0"), item)) == (
        field,
        description,
    )


def test_at_most_100000_recipients() -> None:
    items = [pb.Recipient(profile_id="p")] * 100_000
    _, got = target(recipients(*items))
    assert len(got) == 100_000
    assert refused(target, recipients(*items, pb.Recipient(profile_id="p"))) == (
        "target.recipients",
        "must have at most 100000 recipients",
    )


# --- approval steps, whole requests ---------------------------------------------------


def test_approval_steps() -> None:
    both: list[int] = [pb.APPROVAL_STEP_CONTENT, pb.APPROVAL_STEP_TARGET]
    assert validation.approval_steps("required_approvals", both) == [
        ApprovalStep.CONTENT,
        ApprovalStep.TARGET,
    ]
    assert validation.approval_steps("required_approvals", []) == []
    twice = [pb.APPROVAL_STEP_TARGET, pb.APPROVAL_STEP_CONTENT, pb.APPROVAL_STEP_TARGET]
    assert refused(validation.approval_steps, "required_approvals", twice) == (
        "required_approvals[2]",
        "TARGET is named twice",
    )
    assert refused(validation.approval_steps, "required_approvals", [1, 0]) == (
        "required_approvals[1]",
        "required: one of 1, 2",
    )


def request(**changes: Any) -> pb.CreateDeliveryRequest:
    fields: dict[str, Any] = {
        "label": "Spring sale",
        "content": pb.Content(subject="Sale", body="Hello", links=["https://example.com"]),
        "target": recipients(pb.Recipient(email="a@example.com")),
        "validity_period": duration_pb2.Duration(seconds=3600, nanos=500_000_000),
        "feedback_mode": pb.FEEDBACK_MODE_EFS,
        "required_approvals": [pb.APPROVAL_STEP_TARGET],
        "request_id": "req-1",
    }
    fields.update(changes)
    return pb.CreateDeliveryRequest(**{k: v for k, v in fields.items() if v is not None})


def test_a_new_delivery_carries_every_field() -> None:
    new = validation.new_delivery(request())
    assert (new.label, new.subject, new.body, new.links) == (
        "Spring sale",
        "Sale",
        "Hello",
        ["https://example.com"],
    )
    assert new.feedback_mode is FeedbackMode.EFS
    assert new.validity_period == dt.timedelta(hours=1, seconds=0.5)
    assert new.required_approvals == [ApprovalStep.TARGET]
    assert new.segment is None
    assert [(r.profile_id, r.email) for r in new.recipients] == [(None, "a@example.com")]
    assert new.request_id == "req-1"


def test_a_new_delivery_to_a_segment_without_request_id() -> None:
    new = validation.new_delivery(request(target=pb.Target(segment="vip"), request_id=""))
    assert (new.segment, new.recipients, new.request_id) == ("vip", [], None)
    assert new.feedback_mode is FeedbackMode.EFS


def test_a_recurring_delivery_is_checked_the_same_way() -> None:
    base = request()
    recurring = pb.CreateRecurringDeliveryRequest(
        label=base.label,
        content=base.content,
        target=base.target,
        validity_period=base.validity_period,
        feedback_mode=pb.FEEDBACK_MODE_WITHOUT_EFS,
    )
    new = validation.new_delivery(recurring)
    assert (new.label, new.feedback_mode, new.request_id) == (
        "Spring sale",
        FeedbackMode.WITHOUT_EFS,
        None,
    )


@pytest.mark.parametrize(
    ("changes", "field", "description"),
    [
        ({"content": None}, "content", "required"),
        ({"target": None}, "target", "required"),
        ({"label": ""}, "label", "required"),
        ({"label": "l" * 201}, "label", "must be at most 200 characters"),
        ({"content": pb.Content(subject="s", body="")}, "content.body", "required"),
        ({"target": pb.Target()}, "target", "required: recipients or segment"),
        ({"feedback_mode": None}, "feedback_mode", "required: one of 1, 2"),
        ({"validity_period": None}, "validity_period", "required"),
        ({"validity_period": duration_pb2.Duration(seconds=31 * 86_400)}, *BETWEEN),
        ({"required_approvals": [3]}, "required_approvals[0]", "required: one of 1, 2"),
        ({"request_id": "r" * 201}, "request_id", "must be at most 200 characters"),
        ({"request_id": "r\x00"}, "request_id", "must not contain NUL characters"),
    ],
)
def test_new_delivery_refusals_name_their_field(
    changes: dict[str, Any], field: str, description: str
) -> None:
    assert refused(validation.new_delivery, request(**changes)) == (field, description)


# --- profiles -------------------------------------------------------------------------


def test_profiles_are_returned_field_by_field() -> None:
    got = validation.profiles(
        [
            pb.Profile(profile_id="p1", email="a@example.com", quarantined=True, segments=["x"]),
            pb.Profile(profile_id="p2"),
        ]
    )
    assert [(p.profile_id, p.email, p.quarantined, p.segments) for p in got] == [
        ("p1", "a@example.com", True, ["x"]),
        ("p2", "", False, []),
    ]


@pytest.mark.parametrize(
    ("second", "field", "description"),
    [
        (pb.Profile(), "profiles[1].profile_id", "required"),
        (pb.Profile(profile_id="p0"), "profiles[1].profile_id", "'p0' is named twice"),
        (
            pb.Profile(profile_id="p1", email="not an address"),
            "profiles[1].email",
            "must not contain spaces or control characters",
        ),
        (
            pb.Profile(profile_id="p1", segments=["s"] * 21),
            "profiles[1].segments",
            "must have at most 20 segments",
        ),
        (
            pb.Profile(profile_id="p1", segments=["a", "b", ""]),
            "profiles[1].segments[2]",
            "required",
        ),
        (
            pb.Profile(profile_id="p1", segments=["s" * 101]),
            "profiles[1].segments[0]",
            "must be at most 100 characters",
        ),
    ],
)
def test_profile_refusals_name_the_profile(
    second: pb.Profile, field: str, description: str
) -> None:
    assert refused(validation.profiles, [pb.Profile(profile_id="p0"), second]) == (
        field,
        description,
    )


def test_profile_limits() -> None:
    assert refused(validation.profiles, []) == ("profiles", "must have at least one profile")
    many = [pb.Profile(profile_id=f"p{i}") for i in range(10_000)]
    assert len(validation.profiles(many)) == 10_000
    assert refused(validation.profiles, [*many, pb.Profile(profile_id="last")]) == (
        "profiles",
        "must have at most 10000 profiles",
    )
    (one,) = validation.profiles([pb.Profile(profile_id="p", segments=["s" * 100] * 20)])
    assert one.segments == ["s" * 100] * 20


@pytest.mark.parametrize(
    ("key", "refused_as"),
    [
        ("1:1", None),
        (f"{2**63 - 1}:5", None),
        (f"{2**63}:5", "not an alert key"),  # past a bigint
        ("9999999999999999999:1", "not an alert key"),
        ("12345678901234567890:1", "not an alert key"),  # 20 digits
        (":1", "not an alert key"),
        ("1:", "not an alert key"),
        ("1:12", "not an alert key"),
        ("-1:1", "not an alert key"),
    ],
)
def test_alert_keys(key: str, refused_as: str | None) -> None:
    assert validation.alert_key(key) == refused_as


# --- The event feed -------------------------------------------------------------------


@pytest.mark.parametrize(
    "position",
    [ev.START, ev.Position(1, 2, 3), ev.Position(2**64 - 1, 2**63 - 1, 2**31 - 1)],
)
def test_a_cursor_carries_its_position_there_and_back(position: ev.Position) -> None:
    assert validation.cursor("after", validation.encode_cursor(position)) == position


def test_an_empty_cursor_is_the_start_of_the_feed() -> None:
    assert validation.cursor("after", "") == ev.START


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "not base64!",
        _token("f1:1:2"),
        _token("f1:1:2:3:4"),
        _token("f2:1:2:3"),
        _token("f1:a:2:3"),
        _token(f"f1:{2**64}:0:0"),
        _token(f"f1:0:{2**63}:0"),
        _token(f"f1:0:0:{2**31}"),
        _token("f1:-1:0:0"),
        _token("f1:0:-1:0"),
        _token("f1:0:0:-1"),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_a_cursor_not_issued_here_is_refused(token: str) -> None:
    assert refused(validation.cursor, "after", token) == (
        "after",
        "is not a cursor this service issued",
    )


def test_feed_page_sizes() -> None:
    assert validation.feed_page_size("page_size", 0) == 500
    assert validation.feed_page_size("page_size", 1) == 1
    assert validation.feed_page_size("page_size", 5000) == 5000
    for bad in (-1, 5001):
        assert refused(validation.feed_page_size, "page_size", bad) == (
            "page_size",
            "must be between 0 and 5000",
        )


def test_feed_kinds_name_the_kind_refused() -> None:
    assert validation.feed_kinds("kinds", []) == frozenset()
    assert validation.feed_kinds("kinds", [pb.DELIVERY_EVENT_KIND_RELAYED] * 2) == {
        ev.EventKind.RELAYED
    }
    field, _ = refused(validation.feed_kinds, "kinds", [pb.DELIVERY_EVENT_KIND_OPENED, 0])
    assert field == "kinds[1]"
