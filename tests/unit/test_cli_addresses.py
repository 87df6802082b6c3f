"""`campaign addresses`' own parts, without a service: its choices are the API's enums,
times are RFC 3339 with an offset, and a CSV row has every column."""

from __future__ import annotations

import datetime as dt

import pytest
import typer
from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import delivery_service_pb2 as pb

from campaign_cli import addresses


def short_names(enum: object, prefix: str) -> set[str]:
    values = enum.DESCRIPTOR.values_by_name  # type: ignore[attr-defined]
    return {name.removeprefix(prefix) for name in values} - {"UNSPECIFIED"}


def test_the_choices_are_the_apis_values() -> None:
    assert {s.name for s in addresses.Status} == short_names(adpb.AddressStatus, "ADDRESS_STATUS_")
    assert {s.name for s in addresses.Releasable} == {"ERRONEOUS", "QUARANTINED", "DENYLISTED"}
    assert {r.name for r in addresses.Reason} == short_names(pb.FailureReason, "FAILURE_REASON_")
    for reason in addresses.Reason:
        assert reason.value == reason.name.lower().replace("_", "-")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T04:00:00Z", dt.datetime(2026, 11, 28, 4, tzinfo=dt.UTC)),
        ("2026-11-28T05:00:00+01:00", dt.datetime(2026, 11, 28, 4, tzinfo=dt.UTC)),
        ("2026-11-28 04:00:00.250Z", dt.datetime(2026, 11, 28, 4, 0, 0, 250_000, tzinfo=dt.UTC)),
        (" 2026-11-28T04:00Z ", dt.datetime(2026, 11, 28, 4, tzinfo=dt.UTC)),
    ],
)
def test_times_are_rfc_3339(text: str, expected: dt.datetime) -> None:
    got = addresses.parse_time(text, "'--changed-after'").ToDatetime(tzinfo=dt.UTC)
    assert got == expected


@pytest.mark.parametrize(
    "text", ["yesterday", "2026-11-28", "2026-11-28T04:00:00", "", "2026-13-01T00:00:00Z"]
)
def test_a_time_without_its_offset_or_no_time_is_a_usage_error(text: str) -> None:
    with pytest.raises(typer.BadParameter) as refused:
        addresses.parse_time(text, "'--changed-after'")
    assert "RFC 3339" in str(refused.value)


def test_a_csv_row_has_every_column_and_blanks_for_what_is_unset() -> None:
    entry = adpb.Address(
        address="a@example.com",
        status=adpb.ADDRESS_STATUS_QUARANTINED,
        error_count=1,
        failure_type=pb.FAILURE_TYPE_HARD,
        failure_reason=pb.FAILURE_REASON_USER_UNKNOWN,
        smtp_reply=pb.SmtpReply(code=550, enhanced_status="5.1.1", text="User, unknown"),
        delivery_id=3,
        message_id=4,
        changed_by="feedback",
    )
    entry.update_time.FromSeconds(60)
    assert dict(zip(addresses.CSV_COLUMNS, addresses.csv_row(entry), strict=True)) == {
        "address": "a@example.com",
        "status": "QUARANTINED",
        "error_count": 1,
        "first_error_time": "",
        "last_error_time": "",
        "failure_type": "HARD",
        "failure_reason": "USER_UNKNOWN",
        "smtp_code": 550,
        "smtp_enhanced_status": "5.1.1",
        "smtp_text": "User, unknown",
        "delivery_id": 3,
        "message_id": 4,
        "update_time": "1970-01-01T00:01:00Z",
        "changed_by": "feedback",
    }
    bare = addresses.csv_row(
        adpb.Address(address="b@example.com", status=adpb.ADDRESS_STATUS_VALID)
    )
    assert bare == ["b@example.com", "VALID", 0, "", "", "", "", "", "", "", 0, 0, "", ""]
