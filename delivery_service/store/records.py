"""Rows as typed records: each query names its columns, and a record takes them by name.

The domain's enums are restored on the way in, so that nothing above the store reads
a status as a bare string or number.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from delivery_service.domain.alerts import Criterion, RaisedAlert
from delivery_service.domain.feedback import FailureReason, FailureType, FeedbackMode, Status
from delivery_service.domain.kpis import Counters
from delivery_service.domain.lifecycle import ApprovalStep, State
from delivery_service.domain.preparation import DropReason
from delivery_service.domain.recurring import RecurringState


@dataclass(slots=True)
class Delivery:
    id: int
    label: str
    subject: str
    body: str
    links: list[str]
    target_id: int
    feedback_mode: FeedbackMode
    validity_period: dt.timedelta
    required_approvals: list[ApprovalStep]
    approvals: list[ApprovalStep]
    state: State
    targeted: int
    to_deliver: int
    dropped: int
    recurring_delivery_id: int | None
    create_time: dt.datetime
    confirm_time: dt.datetime | None
    confirmed_by: str | None
    validity_end_time: dt.datetime | None
    created_by: str | None

    def __post_init__(self) -> None:
        self.feedback_mode = FeedbackMode(self.feedback_mode)
        self.state = State(self.state)
        self.required_approvals = [ApprovalStep(s) for s in self.required_approvals]
        self.approvals = [ApprovalStep(s) for s in self.approvals]


@dataclass(slots=True)
class ListedDelivery(Delivery):
    """A delivery of a page, with how many the page had before its bodies' cap."""

    page_rows: int


@dataclass(slots=True)
class DeliveryFigures:
    """What the KPIs of a delivery are computed from: no content, one round trip."""

    id: int
    state: State
    feedback_mode: FeedbackMode
    to_deliver: int
    stats_time: dt.datetime | None
    opened_at_stats: int
    clicked_at_stats: int
    relayed: int
    delivered: int
    soft_bounced: int
    hard_bounced: int
    expired: int
    opened: int
    clicked: int
    complained: int = 0
    # The breakdown: rows of (domain rank, to deliver, then the counters' order), the
    # ranked domains' names, and rows of (failure type, reason, failed messages).
    domain_counters: list[list[int]] = field(default_factory=list)
    domain_names: list[str] = field(default_factory=list)
    failure_counters: list[list[int]] = field(default_factory=list)
    # Its alerts, newest first, as JSON objects of RaisedAlert's fields.
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.feedback_mode = FeedbackMode(self.feedback_mode)
        self.state = State(self.state)

    @property
    def domains(self) -> list[tuple[str, int, Counters]]:
        """(domain, to deliver, counters) of the ranked domains, then of the others
        together ("") if there are any."""
        ranked = [
            (self.domain_names[rank - 1] if rank else "", to_deliver, Counters(*counts))
            for rank, to_deliver, *counts in self.domain_counters
            if rank <= len(self.domain_names)
        ]
        # Rank 0, the others, last.
        return sorted(ranked, key=lambda d: d[0] == "") if ranked else []

    @property
    def failures(self) -> list[tuple[int, int, int]]:
        return [(t, r, n) for t, r, n in self.failure_counters]

    @property
    def raised_alerts(self) -> list[RaisedAlert]:
        return [
            RaisedAlert(
                **{
                    **a,
                    "criterion": Criterion(a["criterion"]),
                    "raise_time": dt.datetime.fromisoformat(a["raise_time"]),
                }
            )
            for a in self.alerts
        ]

    @property
    def counters(self) -> Counters:
        return Counters(
            relayed=self.relayed,
            delivered=self.delivered,
            soft_bounced=self.soft_bounced,
            hard_bounced=self.hard_bounced,
            expired=self.expired,
            opened=self.opened,
            clicked=self.clicked,
            complained=self.complained,
        )


@dataclass(slots=True)
class SendingLog:
    message_id: int
    delivery_id: int
    profile_id: str | None
    email: str
    status: Status
    failure_type: FailureType
    failure_reason: FailureReason
    relay_time: dt.datetime | None
    update_time: dt.datetime
    opened: bool
    clicked: bool
    complained: bool
    smtp_code: int
    smtp_status: str
    smtp_text: str

    def __post_init__(self) -> None:
        self.status = Status(self.status)
        self.failure_type = FailureType(self.failure_type)
        self.failure_reason = FailureReason(self.failure_reason)


@dataclass(slots=True)
class DroppedRecipient:
    profile_id: str | None
    email: str | None
    reason: DropReason

    def __post_init__(self) -> None:
        self.reason = DropReason(self.reason)


@dataclass(slots=True)
class RecurringDelivery:
    id: int
    label: str
    occurrence_interval: dt.timedelta
    confirm_before_send: bool
    next_occurrence_time: dt.datetime
    occurrences: int
    state: RecurringState
    created_by: str | None

    def __post_init__(self) -> None:
        self.state = RecurringState(self.state)


@dataclass(slots=True)
class Operator:
    name: str
    roles: list[str]


@dataclass(slots=True)
class OperatorEntry:
    """An operator as the admin sees it: no token."""

    id: int
    name: str
    roles: list[str]
    create_time: dt.datetime
    expire_time: dt.datetime | None
    revoke_time: dt.datetime | None


@dataclass(slots=True)
class AuditEvent:
    id: int
    time: dt.datetime
    operator: str
    method: str
    target: str
    code: str
    request_id: str
    peer: str
