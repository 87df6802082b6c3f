"""`make demo`: a delivery of a few thousand recipients through the stub's seeded mix, live.

With the pair up (`make run`): creates an operator, creates, prepares and approves a
delivery in EFS mode, sets the MTA stub's seeded mix of fates, confirms the delivery,
shows the progress bar until it is FINISHED, then the KPI table. Whatever happens
(a failure, Ctrl-C), the stub is set back to delivering everything and the demo's
operator is revoked; a request the service would refuse is refused before the stub's
mix is changed.

The operator is created in the service's database, given by --database-url or
DATABASE_URL; `make demo` sets it to the database of `make run` when it is unset.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import duration_pb2
from mta.v1 import mta_service_pb2 as mta
from rich.console import Console

from campaign_cli import operators, render
from campaign_cli.app import DEFAULT_ADDRESS, make_console, parse_duration, show_deployment
from campaign_cli.client import Client, set_mta_scenario
from campaign_cli.errors import CliError, reported
from delivery_service import admin
from mta_stub import presets

DEFAULT_MTA_ADDRESS = "127.0.0.1:50052"
# What share of the messages bounce, retry or get opened and clicked.
MIX = presets.SEEDED_MIX
# Recipients preparation drops, to show its analysis: repeats and undeliverable addresses.
DUPLICATES = 10
INVALID = 5
# The most recipients the service takes in one request, less those the demo adds.
MAX_RECIPIENTS = admin.RECIPIENTS_PER_REQUEST - DUPLICATES - INVALID

demo = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _recipients(count: int) -> list[pb.Recipient]:
    emails = [f"user{i:05d}@demo.example.com" for i in range(count)]
    emails += emails[:DUPLICATES]
    emails += [f"user{i}@undeliverable" for i in range(INVALID)]
    return [pb.Recipient(email=e) for e in emails]


@demo.command()
def run(
    address: Annotated[
        str, typer.Option(envvar="CAMPAIGN_ADDRESS", help="The delivery service.")
    ] = DEFAULT_ADDRESS,
    mta_address: Annotated[
        str, typer.Option(envvar="MTA_ADDRESS", help="The MTA stub.")
    ] = DEFAULT_MTA_ADDRESS,
    database_url: Annotated[
        str,
        typer.Option(
            envvar="DATABASE_URL",
            show_default=False,
            help="The service's database (`make demo` sets that of `make run`).",
        ),
    ] = "",
    recipients: Annotated[int, typer.Option(min=1, max=MAX_RECIPIENTS)] = 3_000,
    validity: Annotated[str, typer.Option(metavar="DURATION")] = "30s",
    timeout: Annotated[float, typer.Option(min=0.1)] = 30.0,
) -> None:
    """Send a demo delivery through the stub's seeded mix and watch it live."""
    period = parse_duration(validity, "'--validity'")
    console = make_console()
    with reported():
        if not database_url:
            raise CliError(None, "set --database-url or DATABASE_URL to the service's database")
        with (
            _demo_operator(database_url, timeout, console) as token,
            Client(address, token, timeout) as client,
        ):
            # Everything the service checks is checked before the stub's mix changes.
            delivery_id = _approved_delivery(client, recipients, period, console)
            with _seeded_mix(mta_address, timeout, console):
                confirmed = client.confirm(delivery_id).delivery
                console.print(
                    f"Approved (target, content) and confirmed by {confirmed.confirmed_by}; "
                    f"validity {render.duration(confirmed.validity_period)}, EFS."
                )
                show_deployment(client, delivery_id, console)


def _approved_delivery(
    client: Client, recipients: int, period: duration_pb2.Duration, console: Console
) -> int:
    """Creates, prepares and approves the demo's delivery; returns its id."""
    created = client.create_delivery(
        pb.CreateDeliveryRequest(
            label=f"Demo: {recipients:,} recipients",
            content=pb.Content(
                subject="Our autumn news",
                body='<p>Hello! <a href="https://example.com/news">Read the news</a></p>',
                links=["https://example.com/news"],
            ),
            target=pb.Target(recipients=pb.RecipientList(recipients=_recipients(recipients))),
            validity_period=period,
            feedback_mode=pb.FEEDBACK_MODE_EFS,
            required_approvals=[pb.APPROVAL_STEP_TARGET, pb.APPROVAL_STEP_CONTENT],
        )
    )
    delivery_id: int = created.delivery.id
    console.print(render.analysis(client.prepare(delivery_id)))
    for step in (pb.APPROVAL_STEP_TARGET, pb.APPROVAL_STEP_CONTENT):
        client.approve(delivery_id, step)
    return delivery_id


@contextmanager
def _seeded_mix(mta_address: str, timeout: float, console: Console) -> Iterator[None]:
    """The stub's seeded mix for the block, and delivering everything after it, however
    it ends (an error, Ctrl-C, even one during the set-up)."""
    try:
        set_mta_scenario(mta_address, mta.SetScenarioRequest(mix=MIX), timeout)
        console.print(
            f"MTA stub at {mta_address}: seeded mix of {MIX.hard_bounce_rate:.0%} hard "
            f"bounces, {MIX.soft_then_delivered_rate:.0%} soft then delivered, "
            f"{MIX.soft_until_expiry_rate:.0%} soft until expiry, "
            f"{MIX.open_rate:.0%} opened, {MIX.click_rate:.0%} of those clicked."
        )
        yield
    finally:
        try:
            set_mta_scenario(mta_address, mta.SetScenarioRequest(), timeout)
        except CliError as err:  # said; the error that ended the block, if any, goes on
            print(f"the MTA stub may still bounce mail: {err.line()}", file=sys.stderr)


@contextmanager
def _demo_operator(database_url: str, timeout: float, console: Console) -> Iterator[str]:
    """A new operator for the block (its token), revoked after it, however it ends: a
    run leaves no live operator behind."""
    name = f"demo-{secrets.token_hex(3)}"
    # Every role but admin: the demo both approves and confirms its delivery.
    roles = [r for r in admin.ROLES if r != "admin"]
    token = ""
    try:
        token = operators.create(database_url, name, roles, timeout)
        console.print(f"Operator {name} created (roles {', '.join(roles)}).")
        yield token
    finally:
        if token:
            try:
                asyncio.run(admin.revoke_operator(database_url, name, timeout=timeout))
            except admin.AdminError as err:
                print(f"operator {name} is still live: {err}", file=sys.stderr)


def main() -> None:
    demo(prog_name="python -m campaign_cli.demo")


if __name__ == "__main__":
    main()
