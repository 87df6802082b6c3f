"""`campaign operators ...` and `campaign audit`: the AdminService (role admin).

This module and recurring_commands.py register their commands on `campaign_cli.app.app`
as they are imported: app.py imports them at its end, and they use its helpers (read
from it when a command runs), whichever module is imported first.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Annotated

import typer
from delivery.v1 import admin_service_pb2 as apb

from campaign_cli import app as cli
from campaign_cli import operators, render
from campaign_cli.errors import CliError
from delivery_service import admin

operators_app = typer.Typer(
    help="Operators and their tokens (role admin; `create` can also work offline).",
    no_args_is_help=True,
)
cli.app.add_typer(operators_app, name="operators")

OperatorName = Annotated[str, typer.Argument(metavar="NAME", help="The operator's name.")]


def _role(name: str) -> str:
    """One of the service's roles (delivery_service.admin.ROLES), as a choice."""
    if name not in admin.ROLES:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(admin.ROLES)}")
    return name


def _offline(ctx: typer.Context, database_url: str) -> bool:
    """Whether `operators create` writes to the database: --database-url on the command
    line, or DATABASE_URL with no token to call the service with."""
    if not database_url:
        return False
    # By name: typer carries a click of its own, whose enum is not click's.
    source = ctx.get_parameter_source("database_url")
    given = source is not None and source.name == "COMMANDLINE"
    return given or not cli._settings(ctx).token


@operators_app.command("create")
def create_operator(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The operator's name, unique.")],
    role: Annotated[
        list[str] | None,
        typer.Option(
            "--role",
            parser=_role,
            metavar=f"[{'|'.join(admin.ROLES)}]",
            help="A role to grant; repeatable.",
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            show_default=False,
            help="The token stops working after this long: 30d, 12h, 1d12h (through the "
            "service only). Default: never.",
        ),
    ] = None,
    database_url: Annotated[
        str,
        typer.Option(
            envvar="DATABASE_URL",
            show_default=False,
            help="Offline: create it straight in this database, with no token and no audit "
            "entry (DATABASE_URL serves only when no --token is given). With neither a token "
            "nor a URL: the database of `make run` in the checkout around the working "
            "directory.",
        ),
    ] = "",
) -> None:
    """Create an operator and print its token, shown only this once.

    Through the service (AdminService, recorded in the audit trail) with an admin's --token:
    after `make run`, the first admin's token is in .data/admin.token. Offline with
    --database-url: straight in the service's database, for a database no service has
    bootstrapped, or a script that holds the database's credentials.
    """
    roles = list(dict.fromkeys(role or []))
    timeout = cli._settings(ctx).timeout
    offline = _offline(ctx, database_url)
    if not offline and not cli._settings(ctx).token:
        database_url = operators.embedded_database_url()
        offline = bool(database_url)
        if offline:
            # Said on stderr: stdout stays the token (or the JSON) alone.
            print(
                f"No token: creating it in the database of `make run`, {database_url}",
                file=sys.stderr,
            )
    if offline:
        if expires is not None:
            raise typer.BadParameter(
                "an expiry needs the service (--token); --database-url creates tokens "
                "that never expire",
                param_hint="'--expires'",
            )
        token = operators.create(database_url, name, roles, timeout)
        cli._show(
            ctx,
            {"name": name, "roles": roles, "token": token},
            render.operator_created(name, roles, token),
        )
        return
    if not cli._settings(ctx).token:
        raise typer.BadParameter(
            "give an admin's --token (or CAMPAIGN_TOKEN) to create it through the service, "
            "or --database-url (or DATABASE_URL) to create it in the database (found by "
            "itself only in a checkout whose `make run` is up)",
            param_hint="'--token' / '--database-url'",
        )
    request = apb.CreateOperatorRequest(name=name, roles=roles)
    if expires is not None:
        period = cli.parse_duration(expires, "'--expires'").ToTimedelta()
        request.expire_time.FromDatetime(dt.datetime.now(dt.UTC) + period)
    try:
        response = cli._client(ctx).create_operator(request)
    except CliError as err:
        # The service names its constraint; say it as the offline path does.
        if err.code == "ALREADY_EXISTS":
            raise CliError(err.code, f"an operator named {name!r} already exists") from None
        raise
    o = response.operator
    expiry = render.when(o.expire_time, o.HasField("expire_time"))
    cli._show(ctx, response, render.operator_created(o.name, o.roles, response.token, expiry))


@operators_app.command("list")
def list_operators(
    ctx: typer.Context,
    page_size: cli.PageSize = 100,
    page_token: cli.PageToken = "",
    every: cli.Every = False,
    output: cli.Output = None,
) -> None:
    """List operators, oldest first, revoked and expired ones too (never their tokens)."""
    client = cli._client(ctx)
    request = apb.ListOperatorsRequest(page_size=page_size)

    def fetch(token: str) -> apb.ListOperatorsResponse:
        request.page_token = token
        return client.list_operators(request)

    response = cli.pages(fetch, page_token, every, "operators")
    table = render.operators_table(response.operators)
    cli.show_list(ctx, response, table, "campaign operators list", output)


@operators_app.command("revoke")
def revoke_operator(ctx: typer.Context, name: OperatorName) -> None:
    """Revoke an operator: its token is refused from now on (within 2 s)."""
    response = cli._client(ctx).revoke_operator(name)
    cli._show(ctx, response, render.operator_table(response.operator))


@operators_app.command("rotate")
def rotate_operator(ctx: typer.Context, name: OperatorName) -> None:
    """Give an operator a new token, printed once; the old one is refused from now on."""
    response = cli._client(ctx).rotate_operator_token(name)
    cli._show(
        ctx,
        response,
        render.operator_table(response.operator),
        render.new_token(response.token),
    )


@cli.app.command("audit")
def audit(
    ctx: typer.Context,
    operator: Annotated[
        str | None, typer.Option(metavar="NAME", help="Only this operator's calls.")
    ] = None,
    page_size: cli.PageSize = 100,
    page_token: cli.PageToken = "",
    every: cli.Every = False,
    output: cli.Output = None,
) -> None:
    """List the audit trail, newest first: every state change and refused attempt (role
    admin)."""
    client = cli._client(ctx)
    request = apb.ListAuditEventsRequest(page_size=page_size, operator=operator or "")

    def fetch(token: str) -> apb.ListAuditEventsResponse:
        request.page_token = token
        return client.audit_events(request)

    response = cli.pages(fetch, page_token, every, "events")
    again = "campaign audit" + (f" --operator {operator}" if operator else "")
    cli.show_list(ctx, response, render.audit_table(response.events), again, output)
