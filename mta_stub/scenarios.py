"""How the stub decides each message's fate, and the timeline of events that follows.

Pure Python: no gRPC, no I/O, no clock. Times are seconds since the epoch, passed in.
Enum values match mta.v1 so the servicer converts them by value.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

MAX_SOFT_BOUNCES = 100
# The longest delay-<ms>, complaint-<ms>, late-hard-<ms> or autoreply-<ms> pattern: a day.
MAX_DELAY_MS = 86_400_000
DEFAULT_MAX_RETRIES = 3
# The time from the delivery report to the complaint, the late bounce or the auto-reply of
# the complaint, late-hard and autoreply patterns (and to a complaint of the mix).
COMPLAINT_DELAY_MS = 50
LATE_BOUNCE_DELAY_MS = 200
AUTO_REPLY_DELAY_MS = 50
# The longest time from the delivery report to a late hard bounce of the mix, by default.
DEFAULT_LATE_BOUNCE_MAX_MS = 300
# The longest client id (Hello.client_id), also as a scenario's scope.
MAX_CLIENT_ID = 200
_INT32_MAX = 2**31 - 1
_MASK64 = 2**64 - 1


class EventKind(IntEnum):
    """What a feedback event reports; values as in mta.v1.EventKind."""

    DELIVERED = 1
    HARD_BOUNCE = 2
    SOFT_BOUNCE = 3
    EXPIRED = 4
    OPENED = 5
    CLICKED = 6
    COMPLAINT = 7
    IGNORED = 8


class BounceReason(IntEnum):
    """Why a message bounced; values as in mta.v1.BounceReason (6 is the delivery service's
    own, expired, never the MTA's)."""

    UNSPECIFIED = 0
    USER_UNKNOWN = 1
    MAILBOX_FULL = 2
    INVALID_DOMAIN = 3
    REFUSED = 4
    UNREACHABLE = 5
    ACCOUNT_DISABLED = 7
    NOT_DEFINED = 8
    AUTO_REPLY = 9


# Adobe Campaign's failure types: these reasons are hard (the mix's hard bounces draw them)...
HARD_REASONS: tuple[BounceReason, ...] = (
    BounceReason.USER_UNKNOWN,
    BounceReason.ACCOUNT_DISABLED,
    BounceReason.REFUSED,
)
# ... and these soft (the mix's soft bounces until expiry draw them).
SOFT_REASONS: tuple[BounceReason, ...] = (
    BounceReason.MAILBOX_FULL,
    BounceReason.INVALID_DOMAIN,
    BounceReason.UNREACHABLE,
    BounceReason.NOT_DEFINED,
)
# Reasons Adobe calls soft that hard-<reason> patterns still bounce hard with, as they did
# before the soft-<reason> patterns: deprecated.
DEPRECATED_HARD_REASONS: tuple[BounceReason, ...] = (
    BounceReason.MAILBOX_FULL,
    BounceReason.INVALID_DOMAIN,
    BounceReason.UNREACHABLE,
)
# The reason of a late hard bounce (one reported after the delivery report).
LATE_BOUNCE_REASON = BounceReason.USER_UNKNOWN


def _pattern_name(reason: BounceReason) -> str:
    return reason.name.lower().replace("_", "-")


_HARD_BY_NAME = {_pattern_name(r): r for r in HARD_REASONS + DEPRECATED_HARD_REASONS}
_SOFT_BY_NAME = {_pattern_name(r): r for r in SOFT_REASONS}
# The events whose feedback carries the receiving server's SMTP reply (mta_stub.replies).
REPLY_KINDS = frozenset({EventKind.HARD_BOUNCE, EventKind.SOFT_BOUNCE, EventKind.IGNORED})

# Soft bounces of a message that bounces at every attempt until its validity ends.
UNTIL_EXPIRY = -1
NO_CLICK = -1

_SOFT = re.compile(r"soft-([0-9]{1,3})")
_CLICK = re.compile(r"click-([0-9]{1,10})")
_DELAY = re.compile(r"delay-([0-9]{1,8})")
_AFTER = re.compile(r"(complaint|late-hard|autoreply)(?:-([0-9]{1,8}))?")
# The event after the delivery report of each _AFTER pattern, and its default delay.
_AFTER_KIND = {
    "complaint": (EventKind.COMPLAINT, COMPLAINT_DELAY_MS),
    "late-hard": (EventKind.HARD_BOUNCE, LATE_BOUNCE_DELAY_MS),
    "autoreply": (EventKind.IGNORED, AUTO_REPLY_DELAY_MS),
}
# Every pattern's local part starts with one of these: other addresses skip the parsing.
_PATTERN_START = re.compile(
    r"hard|soft|open|click|delay|complaint|late-hard|autoreply", re.IGNORECASE
)


class ScenarioError(ValueError):
    """A scenario setting out of range; str() names the field, e.g. "mix.seed: ..."."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")


@dataclass(frozen=True, slots=True)
class Fate:
    """What happens to one message: shared between messages (see make_fate)."""

    hard_reason: BounceReason = BounceReason.UNSPECIFIED
    soft_bounces: int = 0
    opened: bool = False
    click_link: int = NO_CLICK
    # Delivered this long after acceptance, instead of at once.
    delay_ms: int = 0
    # The reason its soft bounces give.
    soft_reason: BounceReason = BounceReason.MAILBOX_FULL
    # What the MTA reports after_ms after the delivery report, if anything: a COMPLAINT, a
    # late HARD_BOUNCE (LATE_BOUNCE_REASON) or an IGNORED auto-reply (AUTO_REPLY).
    after: EventKind | None = None
    after_ms: int = 0


# Interned: a million messages share a handful of fates instead of owning one each.
@functools.lru_cache(maxsize=4096)
def make_fate(
    hard_reason: BounceReason = BounceReason.UNSPECIFIED,
    soft_bounces: int = 0,
    opened: bool = False,
    click_link: int = NO_CLICK,
    delay_ms: int = 0,
    soft_reason: BounceReason = BounceReason.MAILBOX_FULL,
    after: EventKind | None = None,
    after_ms: int = 0,
) -> Fate:
    opened = opened or click_link != NO_CLICK
    return Fate(
        hard_reason, soft_bounces, opened, click_link, delay_ms, soft_reason, after, after_ms
    )


# Members as module constants where every message pays for a comparison: looking one up
# on its enum class costs several times the comparison.
_HARD_BOUNCE = EventKind.HARD_BOUNCE
_SOFT_BOUNCE = EventKind.SOFT_BOUNCE
_IGNORED = EventKind.IGNORED


def awaits_late_bounce(fate: Fate) -> bool:
    """Whether the fate's delivery report is followed by a hard bounce: its fate is decided
    by that bounce, not by the delivery."""
    return fate.after is _HARD_BOUNCE


def has_replies(fate: Fate) -> bool:
    """Whether some event of the fate carries an SMTP reply (which names the address)."""
    # A hard reason (UNSPECIFIED is 0) or soft bounces; or a late bounce or an auto-reply.
    return bool(fate.hard_reason or fate.soft_bounces) or fate.after in REPLY_KINDS


@dataclass(frozen=True, slots=True)
class Mix:
    """A seeded mix of fates for addresses that match no pattern."""

    seed: int = 0
    hard_bounce_rate: float = 0.0
    soft_then_delivered_rate: float = 0.0
    soft_until_expiry_rate: float = 0.0
    open_rate: float = 0.0
    click_rate: float = 0.0
    max_retries: int = DEFAULT_MAX_RETRIES
    # The fraction of delivered messages that also get a complaint, COMPLAINT_DELAY_MS after
    # the delivery report; the fraction of delivered messages that get a late hard bounce
    # instead, 1 to late_hard_bounce_max_ms after it (drawn, as the rest, from the seed and
    # the id). A message gets one or the other, never both: their sum is at most 1.
    complaint_rate: float = 0.0
    late_hard_bounce_rate: float = 0.0
    late_hard_bounce_max_ms: int = DEFAULT_LATE_BOUNCE_MAX_MS


@dataclass(frozen=True, slots=True)
class MixExtras:
    """The fields of a Mix that mta.v1.Mix has none for: a mix set by SetScenario takes them
    from the stub's settings (--mix-extras, a JSON object of these fields)."""

    complaint_rate: float = 0.0
    late_hard_bounce_rate: float = 0.0
    late_hard_bounce_max_ms: int = DEFAULT_LATE_BOUNCE_MAX_MS

    def apply(self, mix: Mix) -> Mix:
        """The mix with these fields."""
        return dataclasses.replace(
            mix,
            complaint_rate=self.complaint_rate,
            late_hard_bounce_rate=self.late_hard_bounce_rate,
            late_hard_bounce_max_ms=self.late_hard_bounce_max_ms,
        )

    @classmethod
    def from_json(cls, text: str) -> MixExtras:
        """The extras of a JSON object ('' for none); raises ScenarioError naming the field."""
        if not text.strip():
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScenarioError("mix_extras", f"not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ScenarioError("mix_extras", "must be a JSON object")
        names = [f.name for f in dataclasses.fields(cls)]
        for name, value in data.items():
            if name not in names:
                raise ScenarioError(f"mix_extras.{name}", f"unknown: one of {', '.join(names)}")
            integral = name == "late_hard_bounce_max_ms"
            if isinstance(value, bool) or not isinstance(value, int if integral else int | float):
                raise ScenarioError(
                    f"mix_extras.{name}", "must be an integer" if integral else "must be a number"
                )
        extras = cls(**data)
        _checked_mix(extras.apply(Mix()))
        return extras


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults injected into the feedback stream."""

    duplicate_events: bool = False
    reorder_window: int = 0
    drop_stream_every: int = 0
    max_delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds between two attempts of a soft-bouncing message, and between engagements."""

    retry_interval: float
    engagement_delay: float


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything SetScenario controls."""

    timing: Timing
    mix: Mix | None = None
    faults: Faults = field(default_factory=Faults)
    # Events are kept in the outbox, none streamed, while this is set.
    hold_feedback: bool = False

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Scenario:
        """The scenario to_json wrote."""
        data = json.loads(text)
        mix = data["mix"]
        return cls(
            timing=Timing(**data["timing"]),
            mix=None if mix is None else Mix(**mix),
            faults=Faults(**data["faults"]),
            hold_feedback=data["hold_feedback"],
        )


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose scenario: one delivery's, one client's, or (neither) the global one."""

    delivery_id: int = 0
    client_id: str = ""

    @property
    def key(self) -> str:
        """The scope as the spool keeps it: '', 'delivery:<id>' or 'client:<id>'."""
        if self.delivery_id:
            return f"delivery:{self.delivery_id}"
        if self.client_id:
            return f"client:{self.client_id}"
        return ""

    @classmethod
    def from_key(cls, key: str) -> Scope:
        kind, _, value = key.partition(":")
        if kind == "delivery":
            return cls(delivery_id=int(value))
        if kind == "client":
            return cls(client_id=value)
        return GLOBAL

    def __str__(self) -> str:
        return self.key or "global"


GLOBAL = Scope()


def checked_scope(delivery_id: int, client_id: str) -> Scope:
    """The scope of a SetScenario or ClearScenario; raises ScenarioError if it is bad."""
    if delivery_id < 0:
        raise ScenarioError("delivery_id", "must not be negative")
    if delivery_id and client_id:
        raise ScenarioError("client_id", "give delivery_id or client_id, not both")
    if len(client_id) > MAX_CLIENT_ID:
        raise ScenarioError("client_id", f"must be at most {MAX_CLIENT_ID} characters")
    return Scope(delivery_id, client_id)


def update_scenario(
    current: Scenario,
    mix: Mix | None,
    faults: Faults,
    retry_interval_ms: int,
    engagement_delay_ms: int,
    hold_feedback: bool = False,
    scope: Scope = GLOBAL,
) -> Scenario:
    """The scenario after a SetScenario: mix, faults and hold replaced, intervals kept when 0.

    current is the scenario that applied to the scope until now. A delivery's scenario
    decides fates and timelines only: faults and hold, which act on streams, are refused
    there. Raises ScenarioError naming the first bad field.
    """
    if scope.delivery_id:
        if faults != Faults():
            raise ScenarioError(
                "faults", "faults act on streams: set them in a client's scenario or the global one"
            )
        if hold_feedback:
            raise ScenarioError(
                "hold_feedback",
                "holding acts on streams: set it in a client's scenario or the global one",
            )
    if mix is not None:
        mix = _checked_mix(mix)
    for name, value in (
        ("faults.reorder_window", faults.reorder_window),
        ("faults.drop_stream_every", faults.drop_stream_every),
        ("faults.max_delay_ms", faults.max_delay_ms),
        ("retry_interval_ms", retry_interval_ms),
        ("engagement_delay_ms", engagement_delay_ms),
    ):
        if value < 0:
            raise ScenarioError(name, "must not be negative")
    timing = Timing(
        retry_interval_ms / 1000 if retry_interval_ms else current.timing.retry_interval,
        engagement_delay_ms / 1000 if engagement_delay_ms else current.timing.engagement_delay,
    )
    return Scenario(timing=timing, mix=mix, faults=faults, hold_feedback=hold_feedback)


def _checked_mix(mix: Mix) -> Mix:
    for name in (
        "hard_bounce_rate",
        "soft_then_delivered_rate",
        "soft_until_expiry_rate",
        "open_rate",
        "click_rate",
        "complaint_rate",
        "late_hard_bounce_rate",
    ):
        rate = getattr(mix, name)
        # Written so that NaN fails too.
        if not 0.0 <= rate <= 1.0:
            raise ScenarioError(f"mix.{name}", "must be between 0 and 1")
    failing = mix.hard_bounce_rate + mix.soft_then_delivered_rate + mix.soft_until_expiry_rate
    if failing > 1.0 + 1e-9:
        raise ScenarioError(
            "mix.hard_bounce_rate",
            "hard_bounce_rate + soft_then_delivered_rate + soft_until_expiry_rate"
            " must be at most 1",
        )
    if mix.complaint_rate + mix.late_hard_bounce_rate > 1.0 + 1e-9:
        raise ScenarioError(
            "mix.complaint_rate", "complaint_rate + late_hard_bounce_rate must be at most 1"
        )
    if mix.max_retries < 0:
        raise ScenarioError("mix.max_retries", "must be at least 1 (0 means the default, 3)")
    if not 0 <= mix.late_hard_bounce_max_ms <= MAX_DELAY_MS:
        raise ScenarioError(
            "mix.late_hard_bounce_max_ms",
            f"must be from 1 to {MAX_DELAY_MS} (0 means the default, {DEFAULT_LATE_BOUNCE_MAX_MS})",
        )
    if mix.max_retries == 0:
        mix = dataclasses.replace(mix, max_retries=DEFAULT_MAX_RETRIES)
    if mix.late_hard_bounce_max_ms == 0:
        mix = dataclasses.replace(mix, late_hard_bounce_max_ms=DEFAULT_LATE_BOUNCE_MAX_MS)
    return mix


def local_part(email: str) -> str:
    """The part of an address that patterns match: before the '@', before any '+', lower case."""
    local = email.rpartition("@")[0] if "@" in email else email
    return local.partition("+")[0].lower()


def pattern_fate(email: str) -> Fate | None:
    """The fate a documented address pattern gives, or None when the address matches none."""
    if not _PATTERN_START.match(email):
        return None
    local = local_part(email)
    if local == "hard":
        return make_fate(hard_reason=BounceReason.USER_UNKNOWN)
    if local.startswith("hard-"):
        reason = _HARD_BY_NAME.get(local[len("hard-") :])
        return None if reason is None else make_fate(hard_reason=reason)
    if local == "soft-expire":
        return make_fate(soft_bounces=UNTIL_EXPIRY)
    soft_reason = _SOFT_BY_NAME.get(local[len("soft-") :]) if local.startswith("soft-") else None
    if soft_reason is not None:
        return make_fate(soft_bounces=UNTIL_EXPIRY, soft_reason=soft_reason)
    if local == "open":
        return make_fate(opened=True)
    if match := _SOFT.fullmatch(local):
        k = int(match[1])
        return make_fate(soft_bounces=k) if 1 <= k <= MAX_SOFT_BOUNCES else None
    if match := _CLICK.fullmatch(local):
        link = int(match[1])
        return make_fate(click_link=link) if link <= _INT32_MAX else None
    if match := _DELAY.fullmatch(local):
        delay_ms = int(match[1])
        return make_fate(delay_ms=delay_ms) if delay_ms <= MAX_DELAY_MS else None
    if match := _AFTER.fullmatch(local):
        after, after_ms = _AFTER_KIND[match[1]]
        if match[2] is not None:
            after_ms = int(match[2])
        return make_fate(after=after, after_ms=after_ms) if after_ms <= MAX_DELAY_MS else None
    return None


def decide_fate(email: str, message_id: int, mix: Mix | None) -> Fate:
    """A message's fate: its address pattern's, else the mix's draw, else delivered."""
    fate = pattern_fate(email)
    if fate is not None:
        return fate
    if mix is None:
        return make_fate()
    return mix_fate(mix, message_id)


def mix_fate(mix: Mix, message_id: int) -> Fate:
    """The mix's fate for a message: a function of (seed, message_id) alone, not arrival order."""
    pick, detail, open_draw, click_draw = _uniforms(mix.seed, message_id)
    if pick < mix.hard_bounce_rate:
        return make_fate(HARD_REASONS[int(detail * len(HARD_REASONS))])
    pick -= mix.hard_bounce_rate
    soft = 0
    if pick < mix.soft_then_delivered_rate:
        soft = 1 + int(detail * mix.max_retries)
    elif pick - mix.soft_then_delivered_rate < mix.soft_until_expiry_rate:
        reason = SOFT_REASONS[int(detail * len(SOFT_REASONS))]
        return make_fate(BounceReason.UNSPECIFIED, UNTIL_EXPIRY, False, NO_CLICK, 0, reason)
    opened = open_draw < mix.open_rate
    click = 0 if opened and click_draw < mix.click_rate else NO_CLICK
    if mix.complaint_rate or mix.late_hard_bounce_rate:
        # Drawn only then, so that a mix without them costs no more than before.
        after_draw, delay_draw = _after_uniforms(mix.seed, message_id)
        if after_draw < mix.late_hard_bounce_rate:
            # A bounced message was never read: no engagement.
            delay_ms = 1 + int(delay_draw * mix.late_hard_bounce_max_ms)
            return make_fate(
                BounceReason.UNSPECIFIED,
                soft,
                False,
                NO_CLICK,
                0,
                BounceReason.MAILBOX_FULL,
                EventKind.HARD_BOUNCE,
                delay_ms,
            )
        if after_draw - mix.late_hard_bounce_rate < mix.complaint_rate:
            return make_fate(
                BounceReason.UNSPECIFIED,
                soft,
                opened,
                click,
                0,
                BounceReason.MAILBOX_FULL,
                EventKind.COMPLAINT,
                COMPLAINT_DELAY_MS,
            )
    # Positional: lru_cache keys keyword calls more slowly, and this runs per message.
    return make_fate(BounceReason.UNSPECIFIED, soft, opened, click)


_GOLDEN = 0x9E3779B97F4A7C15


def _uniforms(seed: int, message_id: int) -> tuple[float, float, float, float]:
    """Four floats in [0, 1), 32 bits each, from two splitmix64 hashes of seed and message_id."""
    first = _splitmix(_seed_key(seed) ^ (message_id & _MASK64))
    second = _splitmix((first + _GOLDEN) & _MASK64)
    return (
        (first >> 32) / 2**32,
        (first & 0xFFFFFFFF) / 2**32,
        (second >> 32) / 2**32,
        (second & 0xFFFFFFFF) / 2**32,
    )


def _after_uniforms(seed: int, message_id: int) -> tuple[float, float]:
    """Two more floats in [0, 1), from the splitmix64 hash after _uniforms' two: the draws
    that mixes had before the complaint and late-bounce rates stay as they were."""
    first = _splitmix(_seed_key(seed) ^ (message_id & _MASK64))
    second = _splitmix((first + _GOLDEN) & _MASK64)
    third = _splitmix((second + _GOLDEN) & _MASK64)
    return (third >> 32) / 2**32, (third & 0xFFFFFFFF) / 2**32


@functools.lru_cache(maxsize=16)
def _seed_key(seed: int) -> int:
    return _splitmix(seed & _MASK64)


def _splitmix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class Step(NamedTuple):
    """One event of a message's timeline: what, which attempt, and when (epoch seconds)."""

    kind: EventKind
    attempt: int
    due: float


def first_step(fate: Fate, now: float, expire_at: float) -> Step:
    """The first attempt, right after acceptance; a message already expired is given up.

    Only a delayed fate's first step is due after now: DELIVERED after the delay, or
    EXPIRED at expire_at if that comes first.
    """
    if now > expire_at:
        return Step(EventKind.EXPIRED, 1, expire_at)
    if fate.delay_ms:
        due = now + fate.delay_ms / 1000
        if due > expire_at:
            return Step(EventKind.EXPIRED, 1, expire_at)
        return Step(EventKind.DELIVERED, 1, due)
    if fate.hard_reason is not BounceReason.UNSPECIFIED:
        return Step(EventKind.HARD_BOUNCE, 1, now)
    if fate.soft_bounces != 0:
        return Step(EventKind.SOFT_BOUNCE, 1, now)
    return Step(EventKind.DELIVERED, 1, now)


def next_step(fate: Fate, previous: Step, expire_at: float, timing: Timing) -> Step | None:
    """The event after previous, or None when the message's timeline is over.

    A retry that would fall after expire_at is given up instead: EXPIRED at
    expire_at, carrying the number of the last attempt made.
    """
    kind = previous.kind
    if kind is EventKind.SOFT_BOUNCE:
        due = previous.due + timing.retry_interval
        if due > expire_at:
            return Step(EventKind.EXPIRED, previous.attempt, expire_at)
        attempt = previous.attempt + 1
        if fate.soft_bounces == UNTIL_EXPIRY or attempt <= fate.soft_bounces:
            return Step(EventKind.SOFT_BOUNCE, attempt, due)
        return Step(EventKind.DELIVERED, attempt, due)
    if fate.after is not None and kind is EventKind.DELIVERED:
        # About the attempt delivered; engagement, if any, comes after it.
        return Step(fate.after, previous.attempt, previous.due + fate.after_ms / 1000)
    if kind in _ENGAGED_AFTER and fate.opened:
        return Step(EventKind.OPENED, 1, previous.due + timing.engagement_delay)
    if kind is EventKind.OPENED and fate.click_link != NO_CLICK:
        return Step(EventKind.CLICKED, 1, previous.due + timing.engagement_delay)
    return None


# The events an open may follow: a late hard bounce ends the timeline.
_ENGAGED_AFTER = frozenset({EventKind.DELIVERED, EventKind.COMPLAINT, EventKind.IGNORED})


class Event(NamedTuple):
    """A feedback event as the stub holds it until acknowledged."""

    message_id: int
    delivery_id: int
    kind: EventKind
    attempt: int
    reason: BounceReason
    link_index: int
    event_time: float

    @property
    def event_id(self) -> str:
        """Stable: the same event resent, or caused by a duplicate, carries the same id."""
        return event_id(self.message_id, self.kind, self.attempt)


def event_id(message_id: int, kind: EventKind, attempt: int) -> str:
    return f"{message_id}:{kind.name}:{attempt}"


def make_event(message_id: int, delivery_id: int, fate: Fate, step: Step) -> Event:
    """The event a step reports, with the bounce reason or link its fate gives."""
    reason = BounceReason.UNSPECIFIED
    kind = step.kind
    if kind is _HARD_BOUNCE:
        # A hard bounce after the delivery report has no reason of the fate's own.
        reason = fate.hard_reason or LATE_BOUNCE_REASON
    elif kind is _SOFT_BOUNCE:
        reason = fate.soft_reason
    elif kind is _IGNORED:
        reason = BounceReason.AUTO_REPLY
    link = fate.click_link if step.kind is EventKind.CLICKED else 0
    return Event(message_id, delivery_id, step.kind, step.attempt, reason, link, step.due)
