"""Checks of incoming requests: each error names the field at fault."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2

from delivery_service import proto_enums
from delivery_service.domain import addresses, lifecycle
from delivery_service.domain.requests import NewDelivery, ProfileUpdate, Recipient

T = TypeVar("T")

MAX_LABEL = 200
MAX_SUBJECT = 998
MAX_BODY = 1 << 20
MAX_LINKS = 100
MAX_LINK = 2048
MAX_RECIPIENTS = 100_000
MAX_PROFILES = 10_000
MAX_ID = 200
MAX_SEGMENTS = 20
MAX_SEGMENT = 100
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MIN_VALIDITY = dt.timedelta(seconds=1)
MAX_VALIDITY = dt.timedelta(days=30)
MIN_INTERVAL = dt.timedelta(seconds=1)
MAX_INTERVAL = dt.timedelta(days=366)

# The largest request the service takes, in bytes on the wire: a larger one is refused
# with RESOURCE_EXHAUSTED before it is read (grpc_common.serving). The largest legitimate
# request is a CreateDelivery (a CreateRecurringDelivery is a few bytes more) at every
# limit above, its free text at 4 bytes a character (UTF-8's most) and its addresses at 1
# (a deliverable address is ASCII), each field with its tag and length:
#   label                      200 x 4 + 3 =        803
#   content.subject            998 x 4 + 3 =      3,995
#   content.body         1,048,576 x 4 + 5 =  4,194,309
#   content.links    100 x (2,048 x 4 + 3) =    819,500
#   content, target: their tags and lengths =        15
#   target: 100,000 x (254 + 3 + 3)        = 26,000,000
#   request_id                 200 x 4 + 3 =        803
#   validity, mode, approvals, schedule    <        100
#   total                                  < 31,019,525 bytes (29.6 MiB)
# UpsertProfiles at its limits, with ASCII ids and segment names, is 10,000 x (203 + 257 +
# 20 x 102 + 2 + 3) = 25,050,000. 32 MiB is 8 % over the largest. A request built of the
# longest ids in 4-byte characters would pass the checks below yet not this limit: it is
# refused too.
MAX_REQUEST_BYTES = 32 * 1024 * 1024

# What a label or a subject must not hold, since it is shown to people as it is: control
# characters (C0, DEL, C1), line and paragraph separators, and the invisible bidi controls
# that reorder or hide what a reader sees (embeddings, overrides, isolates, marks).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BIDI = re.compile(r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# What a link must not hold once normalised: spaces and control characters.
_NOT_IN_LINK = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")

# Proto values to domain members, paired by name in one place.
FEEDBACK_MODES = proto_enums.MODE_OF
APPROVAL_STEPS = proto_enums.STEP_OF
STATES = proto_enums.STATE_OF
STATUSES = proto_enums.STATUS_OF
# ListDeliveries' view: whether the bodies come with the page.
VIEWS = {
    pb.DELIVERY_VIEW_UNSPECIFIED: False,
    pb.DELIVERY_VIEW_BASIC: False,
    pb.DELIVERY_VIEW_FULL: True,
}


class Invalid(Exception):
    """A request field is wrong (INVALID_ARGUMENT)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def text(field: str, value: str, limit: int, *, required: bool = True) -> str:
    if required and not value.strip():
        raise Invalid(field, "required")
    if len(value) > limit:
        raise Invalid(field, f"must be at most {limit} characters")
    if "\x00" in value:
        raise Invalid(field, "must not contain NUL characters")
    return value


def shown_text(field: str, value: str, limit: int) -> str:
    """A label or a subject: text() on one line, without control or bidi characters."""
    value = text(field, value, limit)
    if "\r" in value or "\n" in value:
        raise Invalid(field, "must be one line")
    for pattern, kind in ((_CONTROL, "control"), (_BIDI, "bidi control")):
        found = pattern.search(value)
        if found:
            raise Invalid(field, f"must not contain {kind} characters (U+{ord(found[0]):04X})")
    return value


def link(field: str, value: str) -> str:
    """An http or https URL, checked as it will be used: NFKC-normalised and stripped,
    its scheme in lower case, with a host and no credentials. Returns that form."""
    text(field, value, MAX_LINK)
    normal = unicodedata.normalize("NFKC", value).strip()
    if len(normal) > MAX_LINK:
        raise Invalid(field, f"must be at most {MAX_LINK} characters once normalised (NFKC)")
    if _NOT_IN_LINK.search(normal):
        raise Invalid(field, "must not contain spaces or control characters")
    try:
        parts = urlsplit(normal)
        parts.port  # noqa: B018 - a port that is not a number raises ValueError
    except ValueError:
        raise Invalid(field, "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(field, "must be an http or https URL")
    if parts.username is not None or parts.password is not None:
        raise Invalid(field, "must not carry credentials (user:password@)")
    # urlsplit lower-cases the scheme it returns; the URL keeps it as given otherwise.
    return parts.scheme + normal[len(parts.scheme) :]


def positive_id(field: str, value: int) -> int:
    if value <= 0:
        raise Invalid(field, "required: a positive id")
    return value


def email(field: str, value: str) -> str:
    problem = addresses.malformation(value)
    if problem:
        raise Invalid(field, problem)
    return value


def duration(
    field: str, value: duration_pb2.Duration, low: dt.timedelta, high: dt.timedelta
) -> dt.timedelta:
    if value.seconds == 0 and value.nanos == 0:
        raise Invalid(field, "required")
    if not -315_576_000_000 <= value.seconds <= 315_576_000_000 or abs(value.nanos) >= 10**9:
        raise Invalid(field, "is not a valid duration")
    period = dt.timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)
    if not low <= period <= high:
        raise Invalid(field, f"must be between {low} and {high}")
    return period


def timestamp(field: str, value: timestamp_pb2.Timestamp) -> dt.datetime:
    # Timestamp's own range: years 1 to 9999.
    if not -62_135_596_800 <= value.seconds <= 253_402_300_799 or not 0 <= value.nanos < 10**9:
        raise Invalid(field, "is not a valid timestamp")
    return value.ToDatetime(tzinfo=dt.UTC)


def enum_value(field: str, value: int, values: Mapping[Any, T]) -> T:
    if value not in values:
        raise Invalid(field, "required: one of " + ", ".join(str(k) for k in sorted(values)))
    return values[value]


def page_size(field: str, value: int) -> int:
    if value < 0:
        raise Invalid(field, "must not be negative")
    if value > MAX_PAGE_SIZE:
        raise Invalid(field, f"must be at most {MAX_PAGE_SIZE}")
    return value or DEFAULT_PAGE_SIZE


def encode_page_token(position: int, scope: str) -> str:
    """A keyset position, bound to the request it continues: `scope` names the RPC and
    its filters, and a token is refused with other ones (a page of one filter is no
    place to resume another)."""
    return base64.urlsafe_b64encode(f"v2:{position}:{_digest(scope)}".encode()).decode()


def next_page_token(positions: list[int], limit: int, scope: str, *, more: bool = False) -> str:
    """The token of the page after one whose rows are at `positions`: none after a page
    that was not full, unless `more` says the page was cut short."""
    if positions and (more or len(positions) == limit):
        return encode_page_token(positions[-1], scope)
    return ""


def _digest(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def page_token(field: str, token: str, first: int, scope: str) -> int:
    """The keyset position a page token carries; `first` for an empty token."""
    if not token:
        return first
    try:
        version, position, digest = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        if version != "v2":
            raise ValueError(version)
        value = int(position)
        if not 0 <= value < 2**63:
            raise ValueError(position)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid(field, "is not a token this service issued") from None
    if digest != _digest(scope):
        raise Invalid(field, "was issued for other filters: send the first page's filters")
    return value


def content(field: str, value: pb.Content) -> tuple[str, str, list[str]]:
    subject = shown_text(f"{field}.subject", value.subject, MAX_SUBJECT)
    body = text(f"{field}.body", value.body, MAX_BODY)
    if len(value.links) > MAX_LINKS:
        raise Invalid(f"{field}.links", f"must have at most {MAX_LINKS} links")
    links = [link(f"{field}.links[{i}]", value) for i, value in enumerate(value.links)]
    return subject, body, links


def target(field: str, value: pb.Target) -> tuple[str | None, list[Recipient]]:
    kind = value.WhichOneof("target")
    if kind == "segment":
        return text(f"{field}.segment", value.segment, MAX_SEGMENT), []
    if kind is None:
        raise Invalid(field, "required: recipients or segment")
    items = value.recipients.recipients
    if not items:
        raise Invalid(f"{field}.recipients", "must name at least one recipient")
    if len(items) > MAX_RECIPIENTS:
        raise Invalid(f"{field}.recipients", f"must have at most {MAX_RECIPIENTS} recipients")
    recipients = []
    for i, r in enumerate(items):
        name = f"{field}.recipients.recipients[{i}]"
        which = r.WhichOneof("recipient")
        if which == "profile_id":
            recipients.append(Recipient(text(f"{name}.profile_id", r.profile_id, MAX_ID), None))
        elif which == "email":
            recipients.append(Recipient(None, email(f"{name}.email", r.email)))
        else:
            raise Invalid(name, "required: profile_id or email")
    return None, recipients


def approval_steps(field: str, values: list[int]) -> list[lifecycle.ApprovalStep]:
    steps: list[lifecycle.ApprovalStep] = []
    for i, v in enumerate(values):
        step = enum_value(f"{field}[{i}]", v, APPROVAL_STEPS)
        if step in steps:
            raise Invalid(f"{field}[{i}]", f"{step} is named twice")
        steps.append(step)
    return steps


def new_delivery(
    request: pb.CreateDeliveryRequest | pb.CreateRecurringDeliveryRequest,
) -> NewDelivery:
    """The shared part of CreateDelivery and CreateRecurringDelivery (same field names)."""
    if not request.HasField("content"):
        raise Invalid("content", "required")
    if not request.HasField("target"):
        raise Invalid("target", "required")
    content_value, target_value = request.content, request.target
    subject, body, links = content("content", content_value)
    segment, recipients = target("target", target_value)
    return NewDelivery(
        label=shown_text("label", request.label, MAX_LABEL),
        subject=subject,
        body=body,
        links=links,
        feedback_mode=enum_value("feedback_mode", request.feedback_mode, FEEDBACK_MODES),
        validity_period=duration(
            "validity_period", request.validity_period, MIN_VALIDITY, MAX_VALIDITY
        ),
        required_approvals=approval_steps("required_approvals", list(request.required_approvals)),
        segment=segment,
        recipients=recipients,
        request_id=text("request_id", request.request_id, MAX_ID, required=False) or None,
    )


def profiles(values: list[pb.Profile]) -> list[ProfileUpdate]:
    if not values:
        raise Invalid("profiles", "must have at least one profile")
    if len(values) > MAX_PROFILES:
        raise Invalid("profiles", f"must have at most {MAX_PROFILES} profiles")
    seen: set[str] = set()
    out: list[ProfileUpdate] = []
    for i, p in enumerate(values):
        name = f"profiles[{i}]"
        profile_id = text(f"{name}.profile_id", p.profile_id, MAX_ID)
        if profile_id in seen:
            raise Invalid(f"{name}.profile_id", f"{profile_id!r} is named twice")
        seen.add(profile_id)
        if p.email:
            email(f"{name}.email", p.email)
        if len(p.segments) > MAX_SEGMENTS:
            raise Invalid(f"{name}.segments", f"must have at most {MAX_SEGMENTS} segments")
        for j, segment in enumerate(p.segments):
            text(f"{name}.segments[{j}]", segment, MAX_SEGMENT)
        out.append(ProfileUpdate(profile_id, p.email, p.quarantined, list(p.segments)))
    return out


OPERATOR_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,100}$")


def operator_name(field: str, value: str) -> str:
    if not OPERATOR_NAME.match(value):
        raise Invalid(field, "required: 1 to 100 letters, digits or . _ @ -")
    return value


def roles(field: str, values: list[str], known: tuple[str, ...]) -> list[str]:
    for i, role in enumerate(values):
        if role not in known:
            raise Invalid(f"{field}[{i}]", f"{role!r} is no role; roles are {', '.join(known)}")
    if len(set(values)) != len(values):
        raise Invalid(field, "names a role twice")
    return list(values)


def future_time(field: str, value: timestamp_pb2.Timestamp, now: dt.datetime) -> dt.datetime:
    when = timestamp(field, value)
    if when <= now:
        raise Invalid(field, "must be in the future")
    return when
