"""What the CLI prints: rich tables and the progress bar for people, JSON for scripts.

JSON mirrors the API's messages, made easy to script: integers as numbers (not the
strings of the proto JSON mapping), enums by their short name (`SENT`, not
`SENDING_STATUS_SENT`; null when unspecified), timestamps in RFC 3339, durations in
seconds.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from delivery.v1 import admin_service_pb2 as apb
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor
from google.protobuf.message import Message
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
)
from rich.table import Table
from rich.text import Text

# Rows of dropped recipients a table shows; --json has all the service returned.
DROPPED_SHOWN = 20


# --- JSON ------------------------------------------------------------------------------


def enum_name(enum: EnumDescriptor, number: int) -> str | None:
    """`SENDING_STATUS_SENT` → `SENT`; None for the `_UNSPECIFIED` zero value."""
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    name = value.name.removeprefix(prefix)
    return None if name == "UNSPECIFIED" else name


def _value(enum: Any, value: Any) -> Any:
    # `enum` is the field's EnumDescriptor or None; Any, because descriptors of the upb
    # backend are a different type in the stubs.
    if enum is not None:
        return enum_name(enum, value)
    if isinstance(value, timestamp_pb2.Timestamp):
        return value.ToDatetime(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, duration_pb2.Duration):
        return value.ToTimedelta().total_seconds()
    if isinstance(value, Message):
        return to_json(value)
    return value


def to_json(message: Message) -> dict[str, Any]:
    """A message as a JSON-ready dict; unset message fields are null, as are unset oneofs."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _value(value_field.enum_type, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_value(field.enum_type, v) for v in value]
        elif field.has_presence and not message.HasField(field.name):
            if field.containing_oneof is None:
                out[field.name] = None
        else:
            out[field.name] = _value(field.enum_type, value)
    return out


def dumps(data: Message | Mapping[str, Any]) -> str:
    """One line of JSON: every document the CLI prints is one line, a stream of them too."""
    return json.dumps(to_json(data) if isinstance(data, Message) else data)


# --- CSV -------------------------------------------------------------------------------


class Format(enum.StrEnum):
    """What `--format` prints: a table for people, JSON or CSV for scripts."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


# Messages that JSON shows as one value (RFC 3339, seconds): one CSV column each.
_SCALAR_MESSAGES = frozenset({"google.protobuf.Timestamp", "google.protobuf.Duration"})


def _cell(value: Any) -> Any:
    """A JSON value in one CSV cell: blank for null, true/false, a list of plain values
    joined by `;`, anything nested as its JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ";".join(str(v) for v in value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


def _flat(descriptor: Descriptor, data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A message's JSON as one row: a nested message's fields as `outer.inner` columns.
    Read from the descriptor, so every row of a type has the same columns, set or not."""
    row: dict[str, Any] = {}
    for field in descriptor.fields:
        value = data.get(field.name)
        nested = field.message_type
        if (
            nested is not None
            and not field.is_repeated
            and nested.full_name not in _SCALAR_MESSAGES
        ):
            row |= _flat(nested, value or {}, f"{prefix}{field.name}.")
        else:
            row[prefix + field.name] = _cell(value)
    return row


def write_csv(descriptor: Descriptor, messages: Sequence[Message], *, header: bool = True) -> None:
    """A header (unless a stream of rows already has it), then one row per message, on
    stdout; the columns are the JSON's fields."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    rows = [_flat(descriptor, to_json(m)) for m in messages]
    if header:
        writer.writerow(_flat(descriptor, {}))
    writer.writerows(r.values() for r in rows)
    sys.stdout.flush()


# --- values for people -----------------------------------------------------------------


def state(value: pb.State.ValueType) -> str:
    return enum_name(pb.State.DESCRIPTOR, value) or "-"


def mode(value: pb.FeedbackMode.ValueType) -> str:
    return {pb.FEEDBACK_MODE_EFS: "EFS", pb.FEEDBACK_MODE_WITHOUT_EFS: "without EFS"}.get(
        value, "-"
    )


def _words(enum: EnumDescriptor, number: int) -> str:
    """`APPROVAL_STEP_TARGET` → `target`."""
    return (enum_name(enum, number) or "-").lower().replace("_", " ")


def steps(values: Iterable[pb.ApprovalStep.ValueType]) -> str:
    return ", ".join(_words(pb.ApprovalStep.DESCRIPTOR, v) for v in values) or "none"


def when(value: timestamp_pb2.Timestamp, present: bool, *, zone: bool = True) -> str:
    """A timestamp in UTC, `-` if not `present`; `zone=False` where the header says UTC."""
    if not present:
        return "-"
    text = value.ToDatetime(tzinfo=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{text} UTC" if zone else text


def instant(value: timestamp_pb2.Timestamp) -> str:
    """A time in UTC to the millisecond (where the header says UTC): events of one message
    come milliseconds apart."""
    return value.ToDatetime(tzinfo=dt.UTC).isoformat(" ", "milliseconds").removesuffix("+00:00")


def reply(value: pb.SmtpReply, present: bool) -> str:
    """`550 5.1.1 <addr>: ...`: the code (none when 0), the enhanced status, the text."""
    if not present:
        return "-"
    parts = (str(value.code or ""), value.enhanced_status, value.text)
    return " ".join(part for part in parts if part)


def duration(value: duration_pb2.Duration) -> str:
    """90 s → `1m30s`; the form `--validity` takes."""
    seconds = value.seconds
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def count(value: int) -> str:
    return f"{value:,}"


def percent(value: float) -> str:
    return f"{value:.2f} %"


def _pairs(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    table = Table(title=title or None, title_justify="left", show_header=False, box=box.SIMPLE)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


# --- tables ----------------------------------------------------------------------------


def delivery_table(d: pb.Delivery) -> Table:
    rows = [
        ("Label", d.label),
        ("State", state(d.state)),
        ("Feedback", mode(d.feedback_mode)),
        ("Validity", duration(d.validity_period)),
        ("Subject", d.content.subject),
        ("Links", "\n".join(d.content.links) or "-"),
        ("Approvals", f"{steps(d.approvals)} (required: {steps(d.required_approvals)})"),
        ("To deliver", count(d.to_deliver)),
        ("Dropped", count(d.dropped)),
        ("Created", when(d.create_time, d.HasField("create_time"))),
        ("Created by", d.created_by or "-"),
        ("Confirmed", when(d.confirm_time, d.HasField("confirm_time"))),
        ("Confirmed by", d.confirmed_by or "-"),
        ("Validity ends", when(d.validity_end_time, d.HasField("validity_end_time"))),
    ]
    if d.recurring_delivery_id:
        rows.append(("Recurring", str(d.recurring_delivery_id)))
    return _pairs(f"Delivery {d.id}", rows)


def recurring_table(r: pb.RecurringDelivery) -> Table:
    return _pairs(
        f"Recurring delivery {r.id}",
        [
            ("Label", r.label),
            ("State", enum_name(pb.RecurringState.DESCRIPTOR, r.state) or "-"),
            ("Interval", duration(r.interval)),
            ("Sends", "after ConfirmSend" if r.confirm_before_send else "unattended"),
            ("Next occurrence", when(r.next_occurrence_time, r.HasField("next_occurrence_time"))),
            ("Occurrences", count(r.occurrences)),
            ("Created by", r.created_by or "-"),
        ],
    )


def deliveries_table(deliveries: Iterable[pb.Delivery]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("ID", justify="right")
    # In a terminal too narrow, long text wraps: never cut to an ellipsis.
    table.add_column("Label", overflow="fold")
    table.add_column("State")
    table.add_column("Feedback")
    table.add_column("To deliver", justify="right")
    table.add_column("Created (UTC)", no_wrap=True)
    for d in deliveries:
        table.add_row(
            str(d.id),
            d.label,
            state(d.state),
            mode(d.feedback_mode),
            count(d.to_deliver),
            when(d.create_time, d.HasField("create_time"), zone=False),
        )
    return table


def analysis(response: pb.PrepareDeliveryResponse) -> RenderableType:
    d = response.delivery
    dropped = sum(response.dropped_by_reason.values())
    rows = [
        ("State", state(d.state)),
        ("Targeted", count(response.targeted)),
        ("To deliver", count(response.to_deliver)),
        ("Dropped", count(dropped)),
    ]
    rows += [
        (f"  {reason.lower().replace('_', ' ')}", count(n))
        for reason, n in sorted(response.dropped_by_reason.items())
    ]
    if d.state == pb.STATE_PREPARED:
        rows.append(("Approvals needed", steps(d.required_approvals)))
    parts: list[RenderableType] = [_pairs(f"Delivery {d.id} prepared", rows)]
    if response.dropped:
        recipients = Table("Dropped recipient", "Reason", box=box.SIMPLE_HEAD)
        for r in response.dropped[:DROPPED_SHOWN]:
            who = r.recipient.email or f"profile {r.recipient.profile_id}"
            recipients.add_row(who, _words(pb.DropReason.DESCRIPTOR, r.reason))
        parts.append(recipients)
        if dropped > DROPPED_SHOWN:
            parts.append(f"… and {dropped - DROPPED_SHOWN:,} more (--json lists up to 1,000)")
    return Group(*parts)


def kpi_table(k: pb.Kpis, title: str) -> RenderableType:
    """The KPIs, then failures by reason, the largest domains and the alerts (each only
    when there is something to show), then how the figures stand."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("KPI", style="bold")
    table.add_column("Count", justify="right")
    table.add_column("%", justify="right")
    table.add_row("To deliver", count(k.to_deliver), "")
    table.add_row("Sent (relayed)", count(k.sent), "")
    table.add_row("Delivered", count(k.delivered), percent(k.delivered_percent))
    table.add_row("Bounces + errors", count(k.failed), percent(k.bounces_percent))
    table.add_row("  hard", count(k.hard_failed), "")
    table.add_row("  soft", count(k.soft_failed), "")
    table.add_row("Complaints", count(k.complaints), percent(k.complaint_percent))
    table.add_row("Opened", count(k.opened), percent(k.open_percent))
    table.add_row("Clicked", count(k.clicked), percent(k.click_percent))
    table.add_row("Pending", count(k.pending), "")
    parts: list[RenderableType] = [table]
    if k.failures:
        parts.append(failures_table(k.failures))
    if k.domains:
        parts.append(domains_table(k.domains))
    parts.append(alerts_table(k.alerts, title="Alerts") if k.alerts else "Alerts: none.")
    parts.append(
        _pairs(
            "",
            [
                ("Feedback", mode(k.feedback_mode)),
                ("Stats time", when(k.stats_time, k.HasField("stats_time"))),
                ("Final", "yes" if k.final else "no: the validity period is not over"),
            ],
        )
    )
    return Group(*parts)


def failures_table(failures: Iterable[pb.FailureCount]) -> Table:
    """Failed messages by failure type and reason, most first (the service's order)."""
    table = Table(title="Failures by reason", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("Type")
    table.add_column("Reason")
    table.add_column("Messages", justify="right")
    for f in failures:
        table.add_row(
            _words(pb.FailureType.DESCRIPTOR, f.failure_type),
            _words(pb.FailureReason.DESCRIPTOR, f.failure_reason),
            count(f.messages),
        )
    return table


# The row of the domains beyond the largest, which the service sends with no name.
OTHER_DOMAINS = "(other domains)"


def domains_table(domains: Iterable[pb.DomainKpis]) -> Table:
    """The largest recipient domains' figures, largest first, then the others together."""
    table = Table(title="Domains", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("Domain", overflow="fold")
    for name in ("To deliver", "Sent", "Delivered", "Failed", "Opened", "Clicked", "Complaints"):
        table.add_column(name, justify="right")
    for d in domains:
        table.add_row(
            d.domain or OTHER_DOMAINS,
            *(
                count(n)
                for n in (
                    d.to_deliver,
                    d.sent,
                    d.delivered,
                    d.failed,
                    d.opened,
                    d.clicked,
                    d.complaints,
                )
            ),
        )
    return table


# Alert criteria measured as a ratio (0 to 1): shown as percentages.
RATIO_CRITERIA = frozenset(
    {
        pb.ALERT_CRITERION_HARD_BOUNCE_RATIO,
        pb.ALERT_CRITERION_SOFT_BOUNCE_RATIO,
        pb.ALERT_CRITERION_COMPLAINT_RATIO,
    }
)


def criterion(value: pb.AlertCriterion.ValueType) -> str:
    """`ALERT_CRITERION_HARD_BOUNCE_RATIO` → `hard bounce ratio`."""
    return _words(pb.AlertCriterion.DESCRIPTOR, value)


def measure(criterion: pb.AlertCriterion.ValueType, value: float) -> str:
    """An alert's value or threshold in its criterion's unit: a ratio as a percentage,
    seconds, or messages per hour."""
    if criterion in RATIO_CRITERIA:
        return percent(value * 100)
    if criterion == pb.ALERT_CRITERION_NOTHING_RELAYED:
        return f"{value:,.0f} s"
    if criterion == pb.ALERT_CRITERION_LOW_THROUGHPUT:
        return f"{value:,.0f} /h"
    return f"{value:g}"


def alerts_table(
    alerts: Iterable[pb.Alert], *, title: str = "", with_delivery: bool = False
) -> Table:
    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("Raised (UTC)", no_wrap=True)
    if with_delivery:
        table.add_column("Delivery", justify="right")
    table.add_column("Criterion")
    table.add_column("Value", justify="right")
    table.add_column("Threshold", justify="right")
    table.add_column("Stopped")
    table.add_column("Message", overflow="fold")
    for a in alerts:
        row = [
            criterion(a.criterion),
            measure(a.criterion, a.value),
            measure(a.criterion, a.threshold),
            "yes" if a.stopped else "no",
            a.message,
        ]
        raised = when(a.raise_time, a.HasField("raise_time"), zone=False)
        table.add_row(raised, *([str(a.delivery_id), *row] if with_delivery else row))
    return table


def _failure(log: pb.SendingLog) -> str:
    if log.status != pb.SENDING_STATUS_FAILED:
        return ""
    kind = _words(pb.FailureType.DESCRIPTOR, log.failure_type)
    return f"{kind}: {_words(pb.FailureReason.DESCRIPTOR, log.failure_reason)}"


def logs_table(logs: Iterable[pb.SendingLog], *, with_delivery: bool = False) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    if with_delivery:
        table.add_column("Delivery", justify="right")
    table.add_column("Message", justify="right")
    table.add_column("Recipient", overflow="fold")
    table.add_column("Status")
    table.add_column("Failure", overflow="fold")
    table.add_column("Relayed (UTC)", no_wrap=True)
    table.add_column("Opened")
    table.add_column("Clicked")
    for log in logs:
        recipient = log.email + (f" ({log.profile_id})" if log.profile_id else "")
        row = [
            str(log.message_id),
            recipient,
            enum_name(pb.SendingStatus.DESCRIPTOR, log.status) or "-",
            _failure(log),
            when(log.relay_time, log.HasField("relay_time"), zone=False),
            "yes" if log.opened else "",
            "yes" if log.clicked else "",
        ]
        table.add_row(*([str(log.delivery_id), *row] if with_delivery else row))
    return table


def events_table(
    events: Iterable[pb.DeliveryEvent], *, with_message: bool = False, header: bool = True
) -> Table:
    """Events in feed order; `with_message` adds whose they are (the feed mixes messages
    and deliveries). Printed a batch at a time (`header` on the first only), so the short
    columns have fixed widths that keep batches aligned, and the SMTP reply comes last."""
    table = Table(box=box.SIMPLE_HEAD, show_header=header)
    table.add_column("Time (UTC)", no_wrap=True, min_width=23)
    if with_message:
        table.add_column("Delivery", justify="right", min_width=8)
        table.add_column("Message", justify="right", min_width=8)
        table.add_column("Address", overflow="fold", min_width=28)
    table.add_column("Kind", min_width=11)
    table.add_column("Attempt", justify="right", min_width=7)
    table.add_column("Reason", min_width=16)
    table.add_column("Link", justify="right", min_width=4)
    table.add_column("SMTP reply", overflow="fold")
    for e in events:
        row = [
            _words(pb.DeliveryEventKind.DESCRIPTOR, e.kind),
            str(e.attempt) if e.attempt else "",
            _words(pb.FailureReason.DESCRIPTOR, e.reason) if e.reason else "",
            str(e.link_index) if e.kind == pb.DELIVERY_EVENT_KIND_CLICKED else "",
            reply(e.smtp_reply, True) if e.HasField("smtp_reply") else "",
        ]
        if with_message:
            row = [str(e.delivery_id), str(e.message_id), e.address, *row]
        table.add_row(instant(e.event_time), *row)
    return table


def role_list(values: Iterable[str]) -> str:
    return ", ".join(values) or "(none)"


def operator_table(o: apb.Operator) -> Table:
    return _pairs(
        f"Operator {o.name}",
        [
            ("Roles", role_list(o.roles)),
            ("Created", when(o.create_time, o.HasField("create_time"))),
            ("Expires", when(o.expire_time, o.HasField("expire_time"))),
            ("Revoked", when(o.revoke_time, o.HasField("revoke_time"))),
        ],
    )


def new_token(token: str) -> Group:
    """A token printed once, on its own last line (scripts take the last line, or --json)."""
    return Group("Its token, shown only this once (use it as --token or CAMPAIGN_TOKEN):", token)


def operator_created(name: str, roles: Iterable[str], token: str, expires: str = "-") -> Group:
    lines = [f"Operator {name!r} created with roles {role_list(roles)}."]
    if expires != "-":
        lines.append(f"Its token expires {expires}.")
    return Group(*lines, new_token(token))


def operators_table(operators: Iterable[apb.Operator]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("Name", overflow="fold")
    table.add_column("Roles", overflow="fold")
    table.add_column("Created (UTC)", no_wrap=True)
    table.add_column("Expires (UTC)", no_wrap=True)
    table.add_column("Revoked (UTC)", no_wrap=True)
    for o in operators:
        table.add_row(
            o.name,
            role_list(o.roles),
            when(o.create_time, o.HasField("create_time"), zone=False),
            when(o.expire_time, o.HasField("expire_time"), zone=False),
            when(o.revoke_time, o.HasField("revoke_time"), zone=False),
        )
    return table


def audit_table(events: Iterable[apb.AuditEvent]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("ID", justify="right")
    table.add_column("Time (UTC)", no_wrap=True)
    table.add_column("Operator", overflow="fold")
    table.add_column("Call", overflow="fold")
    table.add_column("Target", overflow="fold")
    table.add_column("Code")
    table.add_column("Request id")
    table.add_column("Peer")
    for e in events:
        table.add_row(
            str(e.id),
            when(e.time, e.HasField("time"), zone=False),
            e.operator or "-",
            # `/delivery.v1.DeliveryService/ConfirmSend` → `DeliveryService/ConfirmSend`.
            e.method.removeprefix("/").split(".")[-1],
            e.target or "-",
            e.code,
            e.request_id,
            e.peer,
        )
    return table


def next_page(token: str, command: str) -> str:
    return f"More: {command} --page-token {token}" if token else "Last page."


# --- the live deployment -----------------------------------------------------------------


class _StatusLine:
    """The line under the bar: feedback so far, and the time left in the validity period."""

    def __init__(self, end: dt.datetime | None) -> None:
        self.end = end
        self.counters = ""
        self.over = False

    def __rich__(self) -> Text:
        # Rendered at every refresh of the live display, so the countdown moves on its own.
        parts = [self.counters]
        if self.end is not None and not self.over:
            left = int((self.end - dt.datetime.now(dt.UTC)).total_seconds())
            parts.append(
                f"validity ends in {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
                if left > 0
                else "validity over, finishing"
            )
        return Text(" · ".join(parts))


class WatchView:
    """The live deployment: a bar of relayed / to deliver with the state, then the feedback."""

    def __init__(self, console: Console, delivery: pb.Delivery) -> None:
        end = (
            delivery.validity_end_time.ToDatetime(tzinfo=dt.UTC)
            if delivery.HasField("validity_end_time")
            else None
        )
        self._progress = Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            console=console,
        )
        self._task = self._progress.add_task(state(delivery.state), total=delivery.to_deliver)
        self._status = _StatusLine(end)
        self._live = Live(
            Group(f"Delivery {delivery.id}: {delivery.label}", self._progress, self._status),
            console=console,
            refresh_per_second=4,
        )

    def __enter__(self) -> WatchView:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()
        if not self._live.console.is_interactive:
            # Off a terminal the display is printed once, at the end, without a newline.
            self._live.console.line()

    def update(self, update: pb.WatchDeploymentResponse) -> None:
        k = update.kpis
        self._progress.update(
            self._task,
            description=state(update.state),
            total=update.to_deliver,
            completed=update.sent,
        )
        self._status.counters = (
            f"delivered {k.delivered:,} · failed {k.failed:,} · pending {k.pending:,}"
        )
        if k.alerts:
            noun = "alert" if len(k.alerts) == 1 else "alerts"
            self._status.counters += f" · {len(k.alerts)} {noun}"
        self._status.over = update.state in (pb.STATE_FINISHED, pb.STATE_STOPPED)
