"""The request checks issue 10 added, at their edges: shown text (labels, subjects),
links as they are stored, operator names and roles, expiries; and the digest that tells
a repeated request from another one under the same request_id."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from google.protobuf import timestamp_pb2

from delivery_service import validation as v
from delivery_service.domain.feedback import FeedbackMode
from delivery_service.domain.lifecycle import TransitionError
from delivery_service.domain.recurring import Control, RecurringState, after
from delivery_service.domain.requests import NewDelivery, Recipient, request_digest


def refused(call: object, *args: object) -> v.Invalid:
    with pytest.raises(v.Invalid) as err:
        call(*args)  # type: ignore[operator]
    return err.value


def test_shown_text_is_one_line_without_control_or_bidi_characters() -> None:
    assert v.shown_text("label", "Spring sale", 20) == "Spring sale"
    assert refused(v.shown_text, "label", "a\nb", 20).description == "must be one line"
    assert refused(v.shown_text, "label", "a\rb", 20).description == "must be one line"
    got = refused(v.shown_text, "label", "a\x07b", 20)
    assert (got.field, got.description) == (
        "label",
        "must not contain control characters (U+0007)",
    )
    got = refused(v.shown_text, "content.subject", "pay\u202eyou", 20)
    assert (got.field, got.description) == (
        "content.subject",
        "must not contain bidi control characters (U+202E)",
    )
    assert refused(v.shown_text, "label", "", 20).description == "required"
    assert v.shown_text("label", "x" * 20, 20) == "x" * 20
    assert refused(v.shown_text, "label", "x" * 21, 20).description == (
        "must be at most 20 characters"
    )


def test_links_are_checked_and_kept_as_they_will_be_used() -> None:
    assert v.link("l", " HTTPS://Example.com/a ") == "https://Example.com/a"
    assert v.link("l", "http://example.com:8080/x") == "http://example.com:8080/x"
    # NFKC: a fullwidth letter becomes its plain form before the checks.
    assert v.link("l", "https://\uff45xample.com/") == "https://example.com/"
    cases = {
        "https://exa mple.com/": "must not contain spaces or control characters",
        "https://example.com/\x01": "must not contain spaces or control characters",
        "https://example.com:port/": "is not a valid URL",
        "ftp://example.com/": "must be an http or https URL",
        "https:///path": "must be an http or https URL",
        "https://user:pw@example.com/": "must not carry credentials (user:password@)",
        "https://user@example.com/": "must not carry credentials (user:password@)",
    }
    for link, description in cases.items():
        got = refused(v.link, "content.links[0]", link)
        assert (got.field, got.description) == ("content.links[0]", description), link
    # Longer than the limit only once normalised (one character becomes three).
    expanded = "https://e.com/" + "\ufb03" * 700  # "ﬃ" is "ffi" under NFKC
    assert len(expanded) <= v.MAX_LINK
    assert refused(v.link, "l", expanded).description == (
        f"must be at most {v.MAX_LINK} characters once normalised (NFKC)"
    )
    exact = "https://e.com/" + "a" * (v.MAX_LINK - len("https://e.com/"))
    assert v.link("l", exact) == exact


def test_operator_names_and_roles() -> None:
    assert v.operator_name("name", "ops.alice@team-1_x") == "ops.alice@team-1_x"
    assert v.operator_name("name", "a" * 100) == "a" * 100
    for bad in ("", "a" * 101, "with space", "semi;colon"):
        got = refused(v.operator_name, "name", bad)
        assert (got.field, got.description) == (
            "name",
            "required: 1 to 100 letters, digits or . _ @ -",
        )
    known = ("read", "write")
    assert v.roles("roles", ["write", "read"], known) == ["write", "read"]
    assert v.roles("roles", [], known) == []
    got = refused(v.roles, "roles", ["read", "root"], known)
    assert (got.field, got.description) == ("roles[1]", "'root' is no role; roles are read, write")
    got = refused(v.roles, "roles", ["read", "read"], known)
    assert (got.field, got.description) == ("roles", "names a role twice")


def test_an_expiry_is_in_the_future() -> None:
    now = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)

    def stamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
        value = timestamp_pb2.Timestamp()
        value.FromDatetime(moment)
        return value

    later = now + dt.timedelta(seconds=1)
    assert v.future_time("expire_time", stamp(later), now) == later
    for moment in (now, now - dt.timedelta(days=1)):
        got = refused(v.future_time, "expire_time", stamp(moment), now)
        assert (got.field, got.description) == ("expire_time", "must be in the future")
    bad = timestamp_pb2.Timestamp(seconds=10**12)
    assert refused(v.future_time, "expire_time", bad, now).description == (
        "is not a valid timestamp"
    )


REQUEST = NewDelivery(
    label="l", subject="s", body="b", links=["https://e.com/"],
    feedback_mode=FeedbackMode.EFS, validity_period=dt.timedelta(hours=1),
    required_approvals=[], segment=None, recipients=[Recipient(None, "a@e.com")],
    request_id="k",
)  # fmt: skip


def test_the_digest_tells_a_repeat_from_another_request() -> None:
    digest = request_digest(REQUEST)
    assert len(digest) == 32 and request_digest(dataclasses.replace(REQUEST)) == digest
    # A known value: the digest is stored, so it must not change between versions.
    assert digest.hex() == KNOWN_DIGEST
    for change in ({"body": "c"}, {"recipients": [Recipient(None, "b@e.com")]},
                   {"validity_period": dt.timedelta(hours=2)}):  # fmt: skip
        assert request_digest(dataclasses.replace(REQUEST, **change)) != digest


KNOWN_DIGEST = "84c8de7ed4ea03a1c23571f5cc72c5df3e013bbd5edf8bd759e0d633256f13fd"


def test_a_cancelled_recurring_delivery_says_so() -> None:
    with pytest.raises(TransitionError) as err:
        after(RecurringState.CANCELLED, Control.RESUME)
    assert str(err.value) == "the recurring delivery is CANCELLED; it cannot be changed"
