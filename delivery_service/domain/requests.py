"""What callers ask for, once checked (validation.py builds these from the protos)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from delivery_service.domain.feedback import FeedbackMode
from delivery_service.domain.lifecycle import ApprovalStep


@dataclass(frozen=True)
class Recipient:
    """One recipient of a list: a profile, or a bare address (exactly one is set)."""

    profile_id: str | None
    email: str | None


@dataclass(frozen=True)
class NewDelivery:
    """A delivery to create, or the template of a recurring delivery's occurrences."""

    label: str
    subject: str
    body: str
    links: list[str]
    feedback_mode: FeedbackMode
    validity_period: dt.timedelta
    required_approvals: list[ApprovalStep]
    segment: str | None
    recipients: list[Recipient]
    request_id: str | None


@dataclass(frozen=True)
class NewRecurring:
    """A recurring delivery to create: its template and schedule."""

    template: NewDelivery
    interval: dt.timedelta
    first_time: dt.datetime | None
    confirm_before_send: bool


@dataclass(frozen=True)
class ProfileUpdate:
    """A profile to create or replace."""

    profile_id: str
    email: str
    quarantined: bool
    segments: list[str]


def request_digest(request: NewDelivery | NewRecurring) -> bytes:
    """A digest of everything a creating request asks for: a request_id reused for a
    different request is told apart from a repeat of the same one."""
    canonical = json.dumps(dataclasses.asdict(request), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).digest()
