"""Checks of incoming requests: each error names the field at fault, and a request's
check reports every bad field at once.

A check of one field raises Invalid at its first problem. A check of a whole request (or
of a part with fields of its own: content, a recipient, a profile) runs its fields'
checks through a `Checks` collector, which keeps each one's refusal and raises one
Invalid listing them all at the end, so that a caller fixes a request in one go.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit

from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2

from delivery_service import proto_enums
from delivery_service.domain import addresses, lifecycle
from delivery_service.domain import events as ev
from delivery_service.domain import quarantine as q
from delivery_service.domain.quarantine import AddressFilter
from delivery_service.domain.requests import NewDelivery, ProfileUpdate, Recipient

T = TypeVar("T")
P = ParamSpec("P")

MAX_LABEL = 200
MAX_SUBJECT = 998
MAX_BODY = 1 << 20
MAX_LINKS = 100
MAX_LINK = 2048
MAX_RECIPIENTS = 100_000
# A recipient list built by AddRecipients, 100,000 at a time.
MAX_LIST_LENGTH = 10_000_000
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


# A refusal lists at most this many field violations (it counts the others): the list
# goes back in a trailer, which a client takes up to 8 KiB of by default.
MAX_VIOLATIONS = 20
# A violation's description is cut to this many characters: some quote the caller's value.
MAX_DESCRIPTION = 200

# A field violation: the field's path and what is wrong with it.
Violation = tuple[str, str]


def _cut(description: str) -> str:
    if len(description) <= MAX_DESCRIPTION:
        return description
    return description[: MAX_DESCRIPTION - 1] + "\u2026"


class Invalid(Exception):
    """Request fields are wrong (INVALID_ARGUMENT): `violations` lists each (field,
    description), the first one's are `field` and `description`; `unlisted` counts those
    beyond MAX_VIOLATIONS. The message is the first one's, naming the others after it."""

    def __init__(self, field: str, description: str, *others: Violation, unlisted: int = 0) -> None:
        self.field = field
        self.description = _cut(description)
        self.violations: tuple[Violation, ...] = (
            (field, self.description),
            *((f, _cut(d)) for f, d in others),
        )
        self.unlisted = unlisted
        message = f"{field}: {self.description}"
        if others or unlisted:
            names = [f for f, _ in others] + (["..."] if unlisted else [])
            message += f" (and {len(others) + unlisted} more invalid fields: {', '.join(names)})"
        super().__init__(message)


class Checks:
    """Collects a request's field violations, to refuse them all at once.

    Each field's check runs through `check(function, *args)`, which returns the
    function's result, or None if it raised Invalid (None whatever the result's type:
    nothing may be built from a result before the block ends). Leaving the `with` block
    raises one Invalid with every violation, an Invalid raised inside the block included.
    """

    def __init__(self) -> None:
        self._found: list[Violation] = []
        self._unlisted = 0

    def __call__(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(*args, **kwargs)
        except Invalid as exc:
            self._add(exc)
            return cast(T, None)

    def fail(self, field: str, description: str) -> None:
        """Reports a violation found by the caller itself."""
        self._add(Invalid(field, description))

    def _add(self, exc: Invalid) -> None:
        room = MAX_VIOLATIONS - len(self._found)
        self._found.extend(exc.violations[:room])
        self._unlisted += exc.unlisted + max(0, len(exc.violations) - room)

    def __enter__(self) -> Checks:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, Invalid):
            self._add(error)
        elif error is not None:
            return
        if self._found:
            (field, description), *others = self._found
            raise Invalid(field, description, *others, unlisted=self._unlisted)


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


def content(field: str, value: pb.Content | None) -> tuple[str, str, list[str]]:
    if value is None:
        raise Invalid(field, "required")
    with Checks() as check:
        subject = check(shown_text, f"{field}.subject", value.subject, MAX_SUBJECT)
        body = check(text, f"{field}.body", value.body, MAX_BODY)
        if len(value.links) > MAX_LINKS:
            check.fail(f"{field}.links", f"must have at most {MAX_LINKS} links")
        given = value.links[:MAX_LINKS]
        links = [check(link, f"{field}.links[{i}]", v) for i, v in enumerate(given)]
    return subject, body, links


def recipient(field: str, value: pb.Recipient) -> Recipient:
    which = value.WhichOneof("recipient")
    if which == "profile_id":
        return Recipient(text(f"{field}.profile_id", value.profile_id, MAX_ID), None)
    if which == "email":
        return Recipient(None, email(f"{field}.email", value.email))
    raise Invalid(field, "required: profile_id or email")


def recipient_list(field: str, value: pb.RecipientList) -> list[Recipient]:
    """1 to MAX_RECIPIENTS recipients, each a profile id or an address."""
    items = value.recipients
    if not items:
        raise Invalid(field, "must name at least one recipient")
    if len(items) > MAX_RECIPIENTS:
        raise Invalid(field, f"must have at most {MAX_RECIPIENTS} recipients")
    name = f"{field}.recipients"
    with Checks() as check:
        recipients = [check(recipient, f"{name}[{i}]", r) for i, r in enumerate(items)]
    return recipients


def list_position(field: str, value: int, added: int) -> int:
    """Where `added` recipients go in a list: from 0, the list at most MAX_LIST_LENGTH."""
    if value < 0:
        raise Invalid(field, "must be 0 or more")
    if value + added > MAX_LIST_LENGTH:
        raise Invalid(field, f"would make the list longer than {MAX_LIST_LENGTH:,} recipients")
    return value


def target(field: str, value: pb.Target | None) -> tuple[str | None, list[Recipient]]:
    if value is None:
        raise Invalid(field, "required")
    kind = value.WhichOneof("target")
    if kind is None:
        raise Invalid(field, "required: recipients or segment")
    if kind == "segment":
        return text(f"{field}.segment", value.segment, MAX_SEGMENT), []
    return None, recipient_list(f"{field}.recipients", value.recipients)


def approval_steps(field: str, values: list[int]) -> list[lifecycle.ApprovalStep]:
    steps: list[lifecycle.ApprovalStep] = []
    with Checks() as check:
        for i, v in enumerate(values):
            step = check(enum_value, f"{field}[{i}]", v, APPROVAL_STEPS)
            if step in steps:
                check.fail(f"{field}[{i}]", f"{step} is named twice")
            elif step is not None:
                steps.append(step)
    return steps


def _given(request: Any, name: str) -> Any:
    """The request's message field `name`, or None if it is not set."""
    return getattr(request, name) if request.HasField(name) else None


def new_delivery(
    request: pb.CreateDeliveryRequest | pb.CreateRecurringDeliveryRequest,
) -> NewDelivery:
    """The shared part of CreateDelivery and CreateRecurringDelivery (same field names)."""
    with Checks() as check:
        written = check(content, "content", _given(request, "content"))
        aimed = check(target, "target", _given(request, "target"))
        label = check(shown_text, "label", request.label, MAX_LABEL)
        mode = check(enum_value, "feedback_mode", request.feedback_mode, FEEDBACK_MODES)
        validity = check(
            duration, "validity_period", request.validity_period, MIN_VALIDITY, MAX_VALIDITY
        )
        steps = check(approval_steps, "required_approvals", list(request.required_approvals))
        request_id = check(text, "request_id", request.request_id, MAX_ID, required=False)
    subject, body, links = written
    segment, recipients = aimed
    return NewDelivery(
        label=label,
        subject=subject,
        body=body,
        links=links,
        feedback_mode=mode,
        validity_period=validity,
        required_approvals=steps,
        segment=segment,
        recipients=recipients,
        request_id=request_id or None,
    )


def profiles(values: list[pb.Profile]) -> list[ProfileUpdate]:
    if not values:
        raise Invalid("profiles", "must have at least one profile")
    if len(values) > MAX_PROFILES:
        raise Invalid("profiles", f"must have at most {MAX_PROFILES} profiles")
    seen: set[str] = set()
    with Checks() as check:
        for i, p in enumerate(values):
            name = f"profiles[{i}]"
            profile_id = check(text, f"{name}.profile_id", p.profile_id, MAX_ID)
            if profile_id in seen:
                check.fail(f"{name}.profile_id", f"{profile_id!r} is named twice")
            elif profile_id is not None:
                seen.add(profile_id)
            if p.email:
                check(email, f"{name}.email", p.email)
            if len(p.segments) > MAX_SEGMENTS:
                check.fail(f"{name}.segments", f"must have at most {MAX_SEGMENTS} segments")
            for j, segment in enumerate(p.segments[:MAX_SEGMENTS]):
                check(text, f"{name}.segments[{j}]", segment, MAX_SEGMENT)
    return [ProfileUpdate(p.profile_id, p.email, p.quarantined, list(p.segments)) for p in values]


OPERATOR_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,100}$")


def operator_name(field: str, value: str) -> str:
    if not OPERATOR_NAME.match(value):
        raise Invalid(field, "required: 1 to 100 letters, digits or . _ @ -")
    return value


def roles(field: str, values: list[str], known: tuple[str, ...]) -> list[str]:
    with Checks() as check:
        for i, role in enumerate(values):
            if role not in known:
                check.fail(f"{field}[{i}]", f"{role!r} is no role; roles are {', '.join(known)}")
        if len(set(values)) != len(values):
            check.fail(field, "names a role twice")
    return list(values)


def future_time(field: str, value: timestamp_pb2.Timestamp, now: dt.datetime) -> dt.datetime:
    when = timestamp(field, value)
    if when <= now:
        raise Invalid(field, "must be in the future")
    return when


# --- the address table (AddressService) ---------------------------------------------------

MAX_ERROR_TEXT = 200
MAX_DOMAIN = 253
# A domain as an address's: dot-separated labels of letters, digits and inner hyphens,
# and a top-level label of letters (domain.addresses' syntax, without the local part).
_DOMAIN = re.compile(r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")
ADDRESS_STATUSES = proto_enums.ADDRESS_STATUS_OF
FAILURE_REASONS = proto_enums.FAILURE_REASON_OF
# What an operator may set by hand: a release (VALID), a quarantine, a denylisting.
# ERRONEOUS is the counted soft errors' status: only feedback sets it.
SETTABLE = frozenset(q.MANUAL_SIGNALS)
# What a bulk release takes.
RELEASABLE = frozenset(
    {q.AddressStatus.ERRONEOUS, q.AddressStatus.QUARANTINED, q.AddressStatus.DENYLISTED}
)
# Timestamp's range (years 1 to 9999) in microseconds since the epoch.
_MICROS = range(-62_135_596_800_000_000, 253_402_300_800_000_000)


def _status_names(statuses: frozenset[q.AddressStatus]) -> str:
    names = [adpb.AddressStatus.Name(proto_enums.ADDRESS_STATUS_PB[s]) for s in sorted(statuses)]
    return ", ".join(names[:-1]) + " or " + names[-1]


def address_status(field: str, value: int, allowed: frozenset[q.AddressStatus]) -> q.AddressStatus:
    """One of the `allowed` statuses, given as its proto value."""
    status = ADDRESS_STATUSES.get(value)
    if status is None or status not in allowed:
        if value == 0:
            raise Invalid(field, f"required: {_status_names(allowed)}")
        try:
            given = adpb.AddressStatus.Name(value)  # type: ignore[arg-type]
        except ValueError:
            given = str(value)
        raise Invalid(field, f"must be {_status_names(allowed)}, not {given}")
    return status


def domain(field: str, value: str) -> str:
    """A domain, as the part of an address after its '@'; returned in lower case."""
    if len(value) > MAX_DOMAIN:
        raise Invalid(field, f"must be at most {MAX_DOMAIN} characters")
    if not _DOMAIN.fullmatch(value):
        raise Invalid(field, "must be a domain such as example.com (no '@', no spaces)")
    return value.lower()


def micros(field: str, value: timestamp_pb2.Timestamp) -> int:
    """A timestamp in microseconds since the epoch (the address table's unit)."""
    timestamp(field, value)
    return value.seconds * 1_000_000 + value.nanos // 1000


def address_filter(
    field: str, value: adpb.AddressFilter, allowed: frozenset[q.AddressStatus]
) -> AddressFilter:
    """A filter of address entries; `allowed`: the statuses it may name."""
    statuses: list[int] = []
    with Checks() as check:
        for i, number in enumerate(value.statuses):
            status = check(address_status, f"{field}.statuses[{i}]", number, allowed)
            if status in statuses:
                check.fail(f"{field}.statuses[{i}]", f"{status.name} is named twice")
            elif status is not None:
                statuses.append(int(status))
        reason = 0
        if value.failure_reason:
            reason = check(
                enum_value, f"{field}.failure_reason", value.failure_reason, FAILURE_REASONS
            )
        error_text = check(
            text, f"{field}.error_text", value.error_text, MAX_ERROR_TEXT, required=False
        )
        if error_text and not error_text.strip():
            check.fail(f"{field}.error_text", "must not be only spaces")
        after = before = None
        if value.HasField("changed_after"):
            after = check(micros, f"{field}.changed_after", value.changed_after)
        if value.HasField("changed_before"):
            before = check(micros, f"{field}.changed_before", value.changed_before)
            if after is not None and before is not None and before <= after:
                check.fail(f"{field}.changed_before", "must be later than changed_after")
        found_domain = check(domain, f"{field}.domain", value.domain) if value.domain else ""
    return AddressFilter(
        statuses=tuple(statuses),
        failure_reason=int(reason),
        domain=found_domain,
        error_text=error_text,
        changed_after=after,
        changed_before=before,
    )


def release_filter(request: adpb.ReleaseAddressesRequest) -> AddressFilter:
    """ReleaseAddresses' filter: at least one field set, so that releasing every entry
    is said on purpose (by naming the statuses)."""
    where = AddressFilter()
    if request.HasField("filter"):
        where = address_filter("filter", request.filter, RELEASABLE)
    if where == AddressFilter():
        raise Invalid(
            "filter",
            "required: at least one field (to release every entry, name the statuses)",
        )
    return where


def encode_keyset_token(position: tuple[int, str], scope: str) -> str:
    """encode_page_token for a keyset of (time, key), such as (update time, address)."""
    time, key = position
    return base64.urlsafe_b64encode(f"v3:{time}:{_digest(scope)}:{key}".encode()).decode()


def next_keyset_token(positions: list[tuple[int, str]], limit: int, scope: str) -> str:
    """next_page_token for a keyset of (time, key)."""
    if positions and len(positions) == limit:
        return encode_keyset_token(positions[-1], scope)
    return ""


def keyset_token(
    field: str,
    token: str,
    scope: str,
    malformation: Callable[[str], str | None] = addresses.malformation,
) -> tuple[int, str] | None:
    """The (time, key) a page token of a keyset of (time, key) carries; None for an empty
    token. `malformation` checks the key (by default: an address)."""
    if not token:
        return None
    try:
        version, time, digest, key = base64.urlsafe_b64decode(token.encode()).decode().split(":", 3)
        value = int(time)
        if version != "v3" or value not in _MICROS or malformation(key):
            raise ValueError(token)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid(field, "is not a token this service issued") from None
    if digest != _digest(scope):
        raise Invalid(field, "was issued for other filters: send the first page's filters")
    return value, key


_ALERT_KEY = re.compile(r"([0-9]{1,19}):[0-9]")


def alert_key(key: str) -> str | None:
    """Why a page token's alert key ("<delivery id>:<criterion>") is not one, or None."""
    match = _ALERT_KEY.fullmatch(key)
    # A delivery id is a bigint: 19 digits reach past it.
    return None if match and int(match[1]) < 2**63 else "not an alert key"


# The event feed (ListDeliveryEvents): kinds, page size and cursors.
FEED_KINDS = proto_enums.FEED_KIND_OF
MAX_FEED_PAGE_SIZE = 5_000
DEFAULT_FEED_PAGE_SIZE = 500


def feed_kinds(field: str, values: Iterable[int]) -> frozenset[ev.EventKind]:
    """The kinds asked for (empty: all)."""
    return frozenset(enum_value(f"{field}[{i}]", v, FEED_KINDS) for i, v in enumerate(values))


def feed_page_size(field: str, value: int) -> int:
    if not 0 <= value <= MAX_FEED_PAGE_SIZE:
        raise Invalid(field, f"must be between 0 and {MAX_FEED_PAGE_SIZE}")
    return value or DEFAULT_FEED_PAGE_SIZE


def encode_cursor(position: tuple[int, int, int]) -> str:
    """A feed position (ev.Position, or its three parts) as the opaque cursor consumers
    keep. Not bound to a filter: a position is the same in every delivery's feed and in
    all of them."""
    xid, seq, item = position
    # binascii and one translation: a third cheaper than base64.urlsafe_b64encode.
    text = f"f1:{xid}:{seq}:{item}".encode()
    return binascii.b2a_base64(text, newline=False).translate(_URLSAFE).decode()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


# The ranges of a position's parts: xid8, bigint, and an item within one row.
_CURSOR_RANGES = (range(2**64), range(2**63), range(2**31))


def cursor(field: str, token: str) -> ev.Position:
    """The position a cursor carries; the feed's start for an empty one."""
    if not token:
        return ev.START
    try:
        version, *parts = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        values = [int(p) for p in parts]
        if version != "f1" or len(values) != 3:
            raise ValueError(token)
        if not all(v in r for v, r in zip(values, _CURSOR_RANGES, strict=True)):
            raise ValueError(token)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid(field, "is not a cursor this service issued") from None
    return ev.Position(*values)
