"""The AddressService's request checks: statuses an operator may set or release, the
filter's fields at their edges, the field each refusal names, and the page tokens of a
keyset of (update time, address)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import timestamp_pb2

from delivery_service import proto_enums
from delivery_service import validation as v
from delivery_service.domain import quarantine as q
from delivery_service.domain.quarantine import AddressFilter

S = q.AddressStatus
EVERY = frozenset(S)
SET_BY_HAND = "ADDRESS_STATUS_VALID, ADDRESS_STATUS_QUARANTINED or ADDRESS_STATUS_DENYLISTED"
# AddressFilter, taking bare numbers as the wire does.
F: Callable[..., adpb.AddressFilter] = adpb.AddressFilter
RELEASED = "ADDRESS_STATUS_ERRONEOUS, ADDRESS_STATUS_QUARANTINED or ADDRESS_STATUS_DENYLISTED"


def refused(check: Callable[..., Any], *args: Any) -> tuple[str, str]:
    with pytest.raises(v.Invalid) as info:
        check(*args)
    (violation,) = info.value.violations
    assert violation == (info.value.field, info.value.description)
    return violation


def at(micros: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(micros)
    return ts


# --- statuses ------------------------------------------------------------------------------


def test_address_statuses_pair_with_the_proto_both_ways() -> None:
    names = {
        n.removeprefix("ADDRESS_STATUS_") for n in adpb.AddressStatus.DESCRIPTOR.values_by_name
    }
    assert names - {"UNSPECIFIED"} == {s.name for s in S}
    assert {s: int(s) for s in S} == proto_enums.ADDRESS_STATUS_PB
    assert {int(s): s for s in S} == v.ADDRESS_STATUSES
    assert v.FAILURE_REASONS[pb.FAILURE_REASON_USER_UNKNOWN].name == "USER_UNKNOWN"


def test_by_hand_an_address_is_released_quarantined_or_denylisted() -> None:
    assert {S.VALID, S.QUARANTINED, S.DENYLISTED} == v.SETTABLE
    assert {S.ERRONEOUS, S.QUARANTINED, S.DENYLISTED} == v.RELEASABLE
    for status in v.SETTABLE:
        assert v.address_status("status", int(status), v.SETTABLE) is status
    assert refused(v.address_status, "status", 0, v.SETTABLE) == (
        "status",
        f"required: {SET_BY_HAND}",
    )
    assert refused(v.address_status, "status", int(S.ERRONEOUS), v.SETTABLE) == (
        "status",
        f"must be {SET_BY_HAND}, not ADDRESS_STATUS_ERRONEOUS",
    )
    assert refused(v.address_status, "status", 5, v.SETTABLE) == (
        "status",
        f"must be {SET_BY_HAND}, not 5",
    )
    assert refused(v.address_status, "s", -1, EVERY)[1].endswith(", not -1")
    assert refused(v.address_status, "s", int(S.VALID), v.RELEASABLE) == (
        "s",
        f"must be {RELEASED}, not ADDRESS_STATUS_VALID",
    )


# --- the filter's fields -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("example.com", "example.com"),
        ("Mail.Example.COM", "mail.example.com"),
        ("a.co", "a.co"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("1.example", "1.example"),
        ("x" * 63 + ".example", "x" * 63 + ".example"),
    ],
)
def test_a_domain_is_kept_in_lower_case(given: str, kept: str) -> None:
    assert v.domain("filter.domain", given) == kept


@pytest.mark.parametrize(
    "given",
    [
        "example",
        "@example.com",
        "user@example.com",
        "exa mple.com",
        " example.com",
        "example.com.",
        ".example.com",
        "a..example.com",
        "-a.example.com",
        "a-.example.com",
        "example.c",
        "example.c0m",
        "x" * 64 + ".example",
        "exa_mple.com",
        "example.com\n",
        "",
    ],
)
def test_what_is_no_domain_is_refused(given: str) -> None:
    assert refused(v.domain, "filter.domain", given) == (
        "filter.domain",
        "must be a domain such as example.com (no '@', no spaces)",
    )


def test_a_domain_is_at_most_253_characters() -> None:
    fits = ("a" * 63 + ".") * 3 + "b" * 61
    assert len(fits) == v.MAX_DOMAIN == 253
    assert v.domain("d", fits) == fits
    assert refused(v.domain, "d", "a" + fits) == ("d", "must be at most 253 characters")


def test_micros_are_the_timestamps_microseconds() -> None:
    assert v.micros("t", timestamp_pb2.Timestamp(seconds=2, nanos=3_999)) == 2_000_003
    assert v.micros("t", timestamp_pb2.Timestamp(seconds=-1, nanos=500_000_000)) == -500_000
    assert v.micros("t", timestamp_pb2.Timestamp(seconds=253_402_300_799)) == (
        253_402_300_799_000_000
    )
    assert refused(v.micros, "t", timestamp_pb2.Timestamp(seconds=253_402_300_800)) == (
        "t",
        "is not a valid timestamp",
    )


def test_an_empty_filter_takes_everything() -> None:
    assert v.address_filter("filter", F(), EVERY) == AddressFilter()


def test_every_field_of_a_filter_is_checked_and_kept() -> None:
    where = F(
        statuses=[adpb.ADDRESS_STATUS_DENYLISTED, adpb.ADDRESS_STATUS_ERRONEOUS],
        failure_reason=pb.FAILURE_REASON_USER_UNKNOWN,
        domain="Outage.Example",
        error_text=" 550-5.1.1 ",
        changed_after=at(1_000_000),
        changed_before=at(1_000_001),
    )
    assert v.address_filter("filter", where, EVERY) == AddressFilter(
        statuses=(4, 2),
        failure_reason=1,
        domain="outage.example",
        error_text=" 550-5.1.1 ",
        changed_after=1_000_000,
        changed_before=1_000_001,
    )
    got = v.address_filter("f", where, EVERY)
    assert all(type(s) is int for s in got.statuses)
    assert type(got.failure_reason) is int
    # Either end of the window alone.
    after = v.address_filter("f", F(changed_after=at(0)), EVERY)
    assert (after.changed_after, after.changed_before) == (0, None)
    before = v.address_filter("f", F(changed_before=at(-5)), EVERY)
    assert (before.changed_after, before.changed_before) == (None, -5)


@pytest.mark.parametrize(
    ("where", "field", "description"),
    [
        (F(statuses=[0]), "f.statuses[0]", "required: "),
        (F(statuses=[1, 9]), "f.statuses[1]", "must be "),
        (F(statuses=[3, 2, 3]), "f.statuses[2]", "QUARANTINED is named twice"),
        (F(failure_reason=42), "f.failure_reason", "required: one of 0, 1, "),
        (F(domain="nodot"), "f.domain", "must be a domain"),
        (F(error_text="x" * 201), "f.error_text", "must be at most 200 "),
        (F(error_text=" \t "), "f.error_text", "must not be only spaces"),
        (F(error_text="a\x00"), "f.error_text", "must not contain NUL"),
        (
            F(changed_after=timestamp_pb2.Timestamp(nanos=-1)),
            "f.changed_after",
            "is not a valid timestamp",
        ),
        (
            F(changed_before=timestamp_pb2.Timestamp(seconds=-62_135_596_801)),
            "f.changed_before",
            "is not a valid timestamp",
        ),
        (
            F(changed_after=at(7), changed_before=at(7)),
            "f.changed_before",
            "must be later than changed_after",
        ),
        (
            F(changed_after=at(8), changed_before=at(7)),
            "f.changed_before",
            "must be later than changed_after",
        ),
    ],
)
def test_a_bad_filter_field_is_named(
    where: adpb.AddressFilter, field: str, description: str
) -> None:
    got_field, got = refused(v.address_filter, "f", where, EVERY)
    assert got_field == field
    assert got.startswith(description), got


def test_the_filter_text_is_at_most_200_characters() -> None:
    fits = F(error_text="x" * v.MAX_ERROR_TEXT)
    assert v.address_filter("f", fits, EVERY).error_text == "x" * 200
    assert v.MAX_ERROR_TEXT == 200


def test_the_statuses_a_filter_may_name_are_the_callers() -> None:
    where = F(statuses=[adpb.ADDRESS_STATUS_VALID])
    assert v.address_filter("f", where, EVERY).statuses == (1,)
    assert refused(v.address_filter, "f", where, v.RELEASABLE) == (
        "f.statuses[0]",
        f"must be {RELEASED}, not ADDRESS_STATUS_VALID",
    )


# --- ReleaseAddresses ----------------------------------------------------------------------

NEEDS_A_FIELD = (
    "filter",
    "required: at least one field (to release every entry, name the statuses)",
)


@pytest.mark.parametrize(
    "request_",
    [
        adpb.ReleaseAddressesRequest(),
        adpb.ReleaseAddressesRequest(dry_run=True),
        adpb.ReleaseAddressesRequest(filter=F()),
    ],
    ids=["no-filter", "dry-run-alone", "empty-filter"],
)
def test_a_release_needs_a_filter_field(request_: adpb.ReleaseAddressesRequest) -> None:
    assert refused(v.release_filter, request_) == NEEDS_A_FIELD


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (F(statuses=[2, 3, 4]), AddressFilter(statuses=(2, 3, 4))),
        (F(failure_reason=1), AddressFilter(failure_reason=1)),
        (F(domain="a.example"), AddressFilter(domain="a.example")),
        (F(error_text="5.1.1"), AddressFilter(error_text="5.1.1")),
        (F(changed_after=at(0)), AddressFilter(changed_after=0)),
        (F(changed_before=at(0)), AddressFilter(changed_before=0)),
    ],
)
def test_any_one_field_makes_a_release_filter(
    where: adpb.AddressFilter, expected: AddressFilter
) -> None:
    assert v.release_filter(adpb.ReleaseAddressesRequest(filter=where)) == expected


def test_a_release_filter_takes_only_releasable_statuses() -> None:
    request = adpb.ReleaseAddressesRequest(filter=F(statuses=[3, 1]))
    assert refused(v.release_filter, request) == (
        "filter.statuses[1]",
        f"must be {RELEASED}, not ADDRESS_STATUS_VALID",
    )
    bad = adpb.ReleaseAddressesRequest(filter=F(domain="x"))
    assert refused(v.release_filter, bad)[0] == "filter.domain"


# --- page tokens of a keyset of (time, address) --------------------------------------------


def test_a_keyset_token_round_trips_within_its_scope() -> None:
    for position in [
        (1_700_000_000_123_456, "a@example.com"),
        (-5, "x:y@b.example"),
        (0, "é@d.fr"),
    ]:
        token = v.encode_keyset_token(position, "ListAddresses:f")
        assert v.keyset_token("page_token", token, "ListAddresses:f") == position
    assert v.keyset_token("page_token", "", "anything") is None


def test_a_keyset_token_of_other_filters_is_refused() -> None:
    token = v.encode_keyset_token((5, "a@example.com"), "ListAddresses:one")
    assert refused(v.keyset_token, "page_token", token, "ListAddresses:two") == (
        "page_token",
        "was issued for other filters: send the first page's filters",
    )


def _token(text: bytes) -> str:
    return base64.urlsafe_b64encode(text).decode()


@pytest.mark.parametrize(
    "token",
    [
        "%%%",
        "abc",
        _token(b"\xff\xfe"),
        _token(b"v3:5:digest"),
        _token(b"v2:5:" + b"0" * 16 + b":a@example.com"),
        _token(b"v3:five:" + b"0" * 16 + b":a@example.com"),
        _token(b"v3:5:" + b"0" * 16 + b":"),
        _token(b"v3:5:" + b"0" * 16 + b":no-at-sign"),
        _token(b"v3:5:" + b"0" * 16 + b":a b@example.com"),
        _token(b"v3:253402300800000000:" + b"0" * 16 + b":a@example.com"),
        _token(b"v3:-62135596800000001:" + b"0" * 16 + b":a@example.com"),
        v.encode_page_token(5, "ListAddresses:f"),
    ],
)
def test_a_token_this_service_did_not_issue_is_refused(token: str) -> None:
    assert refused(v.keyset_token, "page_token", token, "ListAddresses:f") == (
        "page_token",
        "is not a token this service issued",
    )


def test_the_times_edges_are_tokens_still() -> None:
    scope = "s"
    for time in (-62_135_596_800_000_000, 253_402_300_799_999_999):
        token = v.encode_keyset_token((time, "a@example.com"), scope)
        assert v.keyset_token("page_token", token, scope) == (time, "a@example.com")


def test_the_next_token_follows_only_a_full_page() -> None:
    rows = [(30, "c@x.example"), (20, "b@x.example")]
    assert v.next_keyset_token([], 2, "s") == ""
    assert v.next_keyset_token(rows[:1], 2, "s") == ""
    token = v.next_keyset_token(rows, 2, "s")
    assert token == v.encode_keyset_token((20, "b@x.example"), "s")
    assert v.keyset_token("page_token", token, "s") == (20, "b@x.example")
