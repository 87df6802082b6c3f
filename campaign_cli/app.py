"""The `campaign` commands: parse options, call the client, hand the answers to render."""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import typer
from delivery.v1 import admin_service_pb2 as apb
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import duration_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from rich.console import Console, RenderableType
from typer.core import TyperGroup

from campaign_cli import profiles_csv, render
from campaign_cli.client import Client, credentials
from campaign_cli.errors import CliError, reported
from campaign_cli.render import Format
from delivery_service import admin

DEFAULT_ADDRESS = "127.0.0.1:50051"
# The most profiles one UpsertProfiles call may carry is 10,000; half keeps calls short.
IMPORT_CHUNK = 5_000


class _Group(TyperGroup):
    """Any command's CliError becomes one `error:` line and exit code 1."""

    def invoke(self, ctx: Any) -> Any:
        with reported():
            return super().invoke(ctx)


app: typer.Typer = typer.Typer(
    cls=_Group,
    help="Operate the delivery service: deliveries, their live deployment, KPIs and logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _ListByDefault(TyperGroup):
    """A group whose first word is a subcommand only when it names one: `campaign logs 7`
    is `campaign logs list 7`, beside `campaign logs timeline 7 42`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["list", *args]
        return super().parse_args(ctx, args)


profiles_app = typer.Typer(help="Profiles that deliveries target.", no_args_is_help=True)
deliveries_app = typer.Typer(help="Create and run deliveries.", no_args_is_help=True)
stats_app = typer.Typer(help="Recompute KPIs from the logs.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
app.add_typer(deliveries_app, name="deliveries")
logs_app: typer.Typer = typer.Typer(
    cls=_ListByDefault,
    help="A delivery's sending logs (`logs ID`, which is `logs list ID`), or one message's "
    "events (`logs timeline ID MESSAGE_ID`).",
    no_args_is_help=True,
)
app.add_typer(stats_app, name="stats")
app.add_typer(logs_app, name="logs")


class Step(enum.StrEnum):
    TARGET = "target"
    CONTENT = "content"


class StateName(enum.StrEnum):
    DRAFT = "draft"
    PREPARED = "prepared"
    APPROVED = "approved"
    SENDING = "sending"
    SENT = "sent"
    FINISHED = "finished"
    STOPPED = "stopped"


class StatusName(enum.StrEnum):
    QUEUED = "queued"
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class Settings:
    address: str
    token: str | None
    as_json: bool
    timeout: float
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure: bool = False


DeliveryId = Annotated[int, typer.Argument(metavar="ID", min=1, help="The delivery's id.")]
DeliveryFilter = Annotated[
    int | None,
    typer.Option(
        "--delivery",
        metavar="ID",
        min=1,
        show_default=False,
        help="Only this delivery's (default: all).",
    ),
]
PageSize = Annotated[int, typer.Option(min=1, max=1000, help="The most rows a page has.")]
PageToken = Annotated[str, typer.Option(help="The token a previous page printed.")]
Every = Annotated[bool, typer.Option("--all", help="Follow every page to the end.")]
Output = Annotated[
    Format | None,
    typer.Option(
        "--format",
        show_default=False,
        help="table, json or csv (default: table; json with --json).",
    ),
]


@app.callback()
def main_options(
    ctx: typer.Context,
    address: Annotated[
        str, typer.Option(envvar="CAMPAIGN_ADDRESS", help="The delivery service, host:port.")
    ] = DEFAULT_ADDRESS,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CAMPAIGN_TOKEN",
            show_default=False,
            help="An operator token (operators create prints one).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON, one document per line, for scripts.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds each call may take (watch has no limit).")
    ] = 30.0,
    tls_ca: Annotated[
        str | None,
        typer.Option(
            envvar="CAMPAIGN_TLS_CA",
            show_default=False,
            help="PEM CA bundle that signed the service's certificate: connect over TLS.",
        ),
    ] = None,
    tls_cert: Annotated[
        str | None,
        typer.Option(
            envvar="CAMPAIGN_TLS_CERT",
            show_default=False,
            help="PEM client certificate, for a service that requires one (mutual TLS).",
        ),
    ] = None,
    tls_key: Annotated[
        str | None,
        typer.Option(envvar="CAMPAIGN_TLS_KEY", show_default=False, help="PEM key of --tls-cert."),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            envvar="CAMPAIGN_INSECURE",
            help="Allow plaintext to an address beyond this machine (the token in clear).",
        ),
    ] = False,
) -> None:
    """Operate the delivery service: deliveries, their live deployment, KPIs and logs."""
    ctx.obj = Settings(
        address, token or None, as_json, timeout, tls_ca, tls_cert, tls_key, insecure
    )


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


def _client(ctx: typer.Context) -> Client:
    s = _settings(ctx)
    # Closed with the command's context, whatever happens in between.
    tls = credentials(s.address, s.tls_ca, s.tls_cert, s.tls_key, s.insecure)
    return ctx.with_resource(Client(s.address, s.token, s.timeout, tls))


def make_console() -> Console:
    """A console that prints text as given (no markup or emoji codes: labels, subjects
    and addresses are data); off a terminal (a pipe, a file) as wide as the rows need, so
    nothing is cut or wrapped (a terminal's width applies only to a terminal)."""
    console = Console(markup=False, emoji=False, highlight=False)
    if not console.is_terminal:
        console.width = 100_000
    return console


def chosen(ctx: typer.Context, output: Format | None) -> Format:
    """`--format` if given, else JSON with the global --json, else a table."""
    return output or (Format.JSON if _settings(ctx).as_json else Format.TABLE)


def _show(
    ctx: typer.Context,
    data: Message | Mapping[str, Any],
    *shown: RenderableType,
    output: Format | None = None,
    rows: tuple[Descriptor, Sequence[Message]] | None = None,
) -> None:
    """`data` as JSON (--json or `output`); as CSV (`output`) the messages of `rows`, by
    default `data` alone; else the tables and lines in `shown`."""
    how = chosen(ctx, output)
    if how is Format.JSON:
        print(render.dumps(data), flush=True)
    elif how is Format.CSV:
        assert isinstance(data, Message), "only a message has CSV columns"
        render.write_csv(*(rows or (data.DESCRIPTOR, [data])))
    else:
        console = make_console()
        for item in shown:
            console.print(item)


ListPage = (
    pb.ListDeliveriesResponse
    | pb.ListSendingLogsResponse
    | pb.GetProfileHistoryResponse
    | apb.ListOperatorsResponse
    | apb.ListAuditEventsResponse
)


def show_list(
    ctx: typer.Context,
    page: ListPage,
    table: RenderableType,
    command: str,
    output: Format | None = None,
) -> None:
    """A page of a list as JSON, as CSV (a row per item of its one list) or as its `table`;
    then the `command` for the next page (on stderr under CSV: stdout stays CSV alone)."""
    more = render.next_page(page.next_page_token, command)
    if chosen(ctx, output) is not Format.CSV:
        _show(ctx, page, table, more, output=output)
        return
    # Each list page has one repeated message field: its rows.
    (rows,) = (
        (row, getattr(page, f.name))
        for f in page.DESCRIPTOR.fields
        if f.is_repeated and (row := f.message_type) is not None
    )
    _show(ctx, page, output=output, rows=rows)
    if page.next_page_token:
        print(more, file=sys.stderr, flush=True)


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str, option: str) -> duration_pb2.Duration:
    """`1h30m`, `30m`, `90s`, `2d` → a Duration."""
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise typer.BadParameter(
            f"{text!r} is not a duration such as 1h, 30m, 90s or 1h30m", param_hint=option
        )
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return duration_pb2.Duration(seconds=((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(None, f"cannot read {path}: {exc}") from None


# --- profiles ----------------------------------------------------------------------------


_PROFILE_FIELD = re.compile(r"^profiles\[(\d+)\]")


@profiles_app.command("import")
def import_profiles(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="CSV with a header: profile_id,email[,quarantined][,segments] "
            "(segments separated by ';').",
        ),
    ],
    chunk_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Profiles sent per call.")
    ] = IMPORT_CHUNK,
) -> None:
    """Create or update profiles from a CSV file, streamed in chunks."""
    client = _client(ctx)
    created = updated = 0
    try:
        with file.open(encoding="utf-8-sig", newline="") as lines:
            for chunk in profiles_csv.chunks(lines, chunk_size, file.name):
                try:
                    response = client.upsert_profiles(chunk.profiles)
                except CliError as err:
                    raise _import_error(err, chunk, file.name, created + updated) from None
                created += response.created
                updated += response.updated
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(None, f"cannot read {file}: {exc}") from None
    _show(
        ctx,
        {"file": str(file), "profiles": created + updated, "created": created, "updated": updated},
        f"Imported {created + updated:,} profiles from {file.name}: "
        f"{created:,} created, {updated:,} updated.",
    )


def _import_error(err: CliError, chunk: profiles_csv.Chunk, source: str, done: int) -> CliError:
    """The service's error, pointed at the file's line, saying what was imported before."""
    where = f"{source} lines {chunk.lines[0]}-{chunk.lines[-1]}"
    field = _PROFILE_FIELD.match(err.message)
    if field and int(field.group(1)) < len(chunk.lines):
        where = f"{source} line {chunk.lines[int(field.group(1))]}"
    before = f"the {done:,} profiles before it were imported" if done else "nothing was imported"
    return CliError(err.code, f"{err.message} ({where}; {before})")


# --- deliveries --------------------------------------------------------------------------


def _recipients(emails: list[str], file: Path | None) -> list[pb.Recipient]:
    if file is not None:
        lines = (line.strip() for line in _read_text(file).splitlines())
        emails = [*emails, *(line for line in lines if line and not line.startswith("#"))]
    return [pb.Recipient(email=e) for e in emails]


@deliveries_app.command("create")
def create_delivery(
    ctx: typer.Context,
    label: Annotated[str, typer.Option(help="A label for people.")],
    subject: Annotated[str, typer.Option(help="The subject line.")],
    body: Annotated[str | None, typer.Option(help="The HTML body.")] = None,
    body_file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Read the body from a file.")
    ] = None,
    link: Annotated[
        list[str] | None, typer.Option("--link", help="A tracked link of the body; repeatable.")
    ] = None,
    recipient: Annotated[
        list[str] | None, typer.Option("--recipient", help="An email address; repeatable.")
    ] = None,
    recipients_file: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Email addresses, one per line."),
    ] = None,
    segment: Annotated[str | None, typer.Option(help="Target every profile of a segment.")] = None,
    validity: Annotated[
        str,
        typer.Option(
            metavar="DURATION", help="How long soft bounces are retried: 1h, 30m, 90s, 1h30m."
        ),
    ] = "1h",
    efs: Annotated[
        bool, typer.Option("--efs/--no-efs", help="With the Email Feedback Service or not.")
    ] = True,
    approval: Annotated[
        list[Step] | None,
        typer.Option("--approval", help="An approval step the send needs; repeatable."),
    ] = None,
    request_id: Annotated[
        str, typer.Option(help="An idempotency key: a repeat returns the same delivery.")
    ] = "",
) -> None:
    """Create a delivery (DRAFT) for a list of addresses or a segment; a list longer
    than a request takes (100,000) is added to it 100,000 at a time."""
    if (body is None) == (body_file is None):
        raise typer.BadParameter("give exactly one of --body and --body-file", param_hint="body")
    listed = bool(recipient) or recipients_file is not None
    if listed == (segment is not None):
        raise typer.BadParameter(
            "give --recipient/--recipients-file or --segment, one of the two",
            param_hint="target",
        )
    period = parse_duration(validity, "'--validity'")
    listed_recipients = _recipients(recipient or [], recipients_file) if listed else []
    target = (
        pb.Target(segment=segment)
        if segment is not None
        else pb.Target(
            recipients=pb.RecipientList(
                recipients=listed_recipients[: admin.RECIPIENTS_PER_REQUEST]
            )
        )
    )
    request = pb.CreateDeliveryRequest(
        label=label,
        content=pb.Content(
            subject=subject,
            body=_read_text(body_file) if body_file is not None else body or "",
            links=link or [],
        ),
        target=target,
        validity_period=period,
        feedback_mode=pb.FEEDBACK_MODE_EFS if efs else pb.FEEDBACK_MODE_WITHOUT_EFS,
        required_approvals=[_step(s) for s in dict.fromkeys(approval or [])],
        request_id=request_id,
    )
    client = _client(ctx)
    response = client.create_delivery(request)
    # A longer list: the rest a call at a time, each at its position, so that running
    # the command again (with --request-id) repeats calls the service recognises.
    for position in range(
        admin.RECIPIENTS_PER_REQUEST, len(listed_recipients), admin.RECIPIENTS_PER_REQUEST
    ):
        client.add_recipients(
            response.delivery.id,
            position,
            listed_recipients[position : position + admin.RECIPIENTS_PER_REQUEST],
        )
    _show(ctx, response, render.delivery_table(response.delivery))


def _step(step: Step) -> pb.ApprovalStep.ValueType:
    return pb.ApprovalStep.Value(f"APPROVAL_STEP_{step.name}")


@deliveries_app.command("prepare")
def prepare(ctx: typer.Context, delivery_id: DeliveryId) -> None:
    """Analyse the target: how many to deliver, how many dropped and why."""
    response = _client(ctx).prepare(delivery_id)
    _show(ctx, response, render.analysis(response))


@deliveries_app.command("approve")
def approve(
    ctx: typer.Context,
    delivery_id: DeliveryId,
    step: Annotated[list[Step], typer.Option("--step", help="The step carried out; repeatable.")],
) -> None:
    """Carry out approval steps (role approve_deliveries)."""
    client = _client(ctx)
    responses = [client.approve(delivery_id, _step(s)) for s in dict.fromkeys(step)]
    _show(ctx, responses[-1], render.delivery_table(responses[-1].delivery))


@deliveries_app.command("confirm")
def confirm(
    ctx: typer.Context,
    delivery_id: DeliveryId,
    watch_it: Annotated[
        bool, typer.Option("--watch", help="Then watch the deployment until it is over.")
    ] = False,
) -> None:
    """Confirm the send (role start_deliveries); confirming again never sends twice."""
    client = _client(ctx)
    response = client.confirm(delivery_id)
    _show(ctx, response, render.delivery_table(response.delivery))
    if watch_it:
        _watch(ctx, client, delivery_id)


@deliveries_app.command("stop")
def stop(ctx: typer.Context, delivery_id: DeliveryId) -> None:
    """Stop a delivery before it finishes (role start_deliveries)."""
    response = _client(ctx).stop(delivery_id)
    _show(ctx, response, render.delivery_table(response.delivery))


@deliveries_app.command("get")
def get(ctx: typer.Context, delivery_id: DeliveryId, output: Output = None) -> None:
    """Show one delivery."""
    response = _client(ctx).get(delivery_id)
    _show(
        ctx,
        response,
        render.delivery_table(response.delivery),
        output=output,
        rows=(pb.Delivery.DESCRIPTOR, [response.delivery]),
    )


# What is being sent: relayed now (SENDING), or relayed and waiting for the end of its
# validity (SENT); FINISHED is final.
LIVE_STATES = (pb.STATE_SENDING, pb.STATE_SENT)


@deliveries_app.command("list")
def list_deliveries(
    ctx: typer.Context,
    state: Annotated[StateName | None, typer.Option(help="Only deliveries in this state.")] = None,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Only what is being sent: SENDING, or SENT and not final yet (every page).",
        ),
    ] = False,
    page_size: PageSize = 20,
    page_token: PageToken = "",
    output: Output = None,
) -> None:
    """List deliveries, newest first."""
    if live and (state is not None or page_token):
        raise typer.BadParameter("--live lists every page of its own states", param_hint="'--live'")
    client = _client(ctx)
    if live:
        found = [d for wanted in LIVE_STATES for d in _every_delivery(client, wanted)]
        # Ids grow with creation: the two lists merged, newest first.
        response = pb.ListDeliveriesResponse(deliveries=sorted(found, key=lambda d: -d.id))
    else:
        request = pb.ListDeliveriesRequest(page_size=page_size, page_token=page_token)
        if state is not None:
            request.state = pb.State.Value(f"STATE_{state.name}")
        response = client.list_deliveries(request)
    show_list(
        ctx,
        response,
        render.deliveries_table(response.deliveries),
        "campaign deliveries list" + (f" --state {state.value}" if state is not None else ""),
        output,
    )


def _every_delivery(client: Client, state: pb.State.ValueType) -> list[pb.Delivery]:
    request = pb.ListDeliveriesRequest(page_size=1000, state=state)

    def fetch(token: str) -> pb.ListDeliveriesResponse:
        request.page_token = token
        return client.list_deliveries(request)

    return list(pages(fetch, "", True, "deliveries").deliveries)


# --- deployment, KPIs, logs ----------------------------------------------------------------


def _watch(ctx: typer.Context, client: Client, delivery_id: int) -> None:
    if _settings(ctx).as_json:
        for update in client.watch(delivery_id):
            print(render.dumps(update), flush=True)
    else:
        show_deployment(client, delivery_id, make_console())


def show_deployment(client: Client, delivery_id: int, console: Console) -> None:
    """The live progress bar until the deployment is over, then the KPI table."""
    # The delivery once, for the countdown to the end of its validity period.
    delivery = client.get(delivery_id).delivery
    seen = False
    with render.WatchView(console, delivery) as view:
        for update in client.watch(delivery_id):
            view.update(update)
            seen = True
    if not seen:
        raise CliError("UNAVAILABLE", "the deployment stream ended before its first update")
    # Read once more: the figures the service settled on when the stream ended.
    kpis = client.kpis(delivery_id).kpis
    console.print(render.kpi_table(kpis, f"KPIs of delivery {delivery_id}"))


@app.command("watch")
def watch(ctx: typer.Context, delivery_id: DeliveryId) -> None:
    """Show the deployment live until FINISHED or STOPPED, then the KPI table."""
    _watch(ctx, _client(ctx), delivery_id)


@app.command("kpis")
def kpis(
    ctx: typer.Context,
    delivery_id: DeliveryId,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Recount them from the logs first, Open % and Click % included (what "
            "`stats compute` does; role compute_stats).",
        ),
    ] = False,
    output: Output = None,
) -> None:
    """Show a delivery's KPIs: hard and soft failures, complaints, failures by reason, the
    largest recipient domains, and its alerts."""
    if refresh:
        show_recount(ctx, delivery_id, output)
        return
    response = _client(ctx).kpis(delivery_id)
    title = f"KPIs of delivery {delivery_id}"
    _show(ctx, response, render.kpi_table(response.kpis, title), output=output)


class _Page(Protocol):
    next_page_token: str


PageT = TypeVar("PageT", bound=_Page)


def pages(fetch: Callable[[str], PageT], token: str, every: bool, rows: str) -> PageT:
    """The page at `token`; with `every`, it and every page after it, their repeated field
    `rows` gathered in one response (whose next_page_token is then empty)."""
    response = fetch(token)
    while every and response.next_page_token:
        page = fetch(response.next_page_token)
        getattr(response, rows).extend(getattr(page, rows))
        response.next_page_token = page.next_page_token
    return response


@logs_app.command("list")
def logs(
    ctx: typer.Context,
    delivery_id: DeliveryId,
    status: Annotated[StatusName | None, typer.Option(help="Only logs with this status.")] = None,
    page_size: PageSize = 100,
    page_token: PageToken = "",
    every: Every = False,
    output: Output = None,
) -> None:
    """List the sending logs of a delivery: one row per message (`campaign logs ID` too)."""
    client = _client(ctx)
    request = pb.ListSendingLogsRequest(delivery_id=delivery_id, page_size=page_size)
    if status is not None:
        request.status = pb.SendingStatus.Value(f"SENDING_STATUS_{status.name}")

    def fetch(token: str) -> pb.ListSendingLogsResponse:
        request.page_token = token
        return client.sending_logs(request)

    response = pages(fetch, page_token, every, "sending_logs")
    again = f"campaign logs {delivery_id}" + (f" --status {status.value}" if status else "")
    show_list(ctx, response, render.logs_table(response.sending_logs), again, output)


@app.command("history")
def history(
    ctx: typer.Context,
    profile_id: Annotated[str | None, typer.Option(help="A profile's id.")] = None,
    email: Annotated[str | None, typer.Option(help="An inline recipient's address.")] = None,
    page_size: PageSize = 100,
    page_token: PageToken = "",
    every: Every = False,
    output: Output = None,
) -> None:
    """List the messages sent to a profile or an address, newest first."""
    if (profile_id is None) == (email is None):
        raise typer.BadParameter("give --profile-id or --email", param_hint="profile")
    client = _client(ctx)
    request = pb.GetProfileHistoryRequest(page_size=page_size)
    if profile_id is not None:
        request.profile_id = profile_id
        again = f"campaign history --profile-id {profile_id}"
    else:
        request.email = email or ""
        again = f"campaign history --email {email}"

    def fetch(token: str) -> pb.GetProfileHistoryResponse:
        request.page_token = token
        return client.history(request)

    response = pages(fetch, page_token, every, "sending_logs")
    table = render.logs_table(response.sending_logs, with_delivery=True)
    show_list(ctx, response, table, again, output)


@stats_app.command("compute")
def compute_stats(ctx: typer.Context, delivery_id: DeliveryId, output: Output = None) -> None:
    """Recount every KPI from the logs, repair drifted counters, refresh Open/Click %."""
    show_recount(ctx, delivery_id, output)


def show_recount(ctx: typer.Context, delivery_id: int, output: Format | None) -> None:
    """ComputeStats, then its KPI table and how many counters it repaired."""
    response = _client(ctx).compute_stats(delivery_id)
    _show(
        ctx,
        response,
        render.kpi_table(response.kpis, f"KPIs of delivery {delivery_id}, recomputed"),
        f"Repaired counters: {response.repaired_counters}",
        output=output,
    )


# --- recurring deliveries, operators and audit, addresses, alerts, events ------------------

# Their modules register them on `app` and use the helpers above (hence last).
from campaign_cli import (  # noqa: E402, F401
    addresses,
    admin_commands,
    alerts,
    events,
    recurring_commands,
)
