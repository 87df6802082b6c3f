"""`campaign recurring ...`: read a recurring delivery, pause, resume or cancel it (on
`campaign_cli.app`, as admin_commands.py says)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from delivery.v1 import delivery_service_pb2 as pb

from campaign_cli import app as cli
from campaign_cli import render
from campaign_cli.client import Client

recurring_app = typer.Typer(
    help="Recurring deliveries: read (read_deliveries); pause, resume, cancel (start_deliveries).",
    no_args_is_help=True,
)
cli.app.add_typer(recurring_app, name="recurring")

RecurringId = Annotated[
    int, typer.Argument(metavar="ID", min=1, help="The recurring delivery's id.")
]


@recurring_app.command("get")
def get_recurring(ctx: typer.Context, recurring_id: RecurringId, output: cli.Output = None) -> None:
    """Show a recurring delivery (its state, its creator) and its latest occurrences."""
    response = cli._client(ctx).get_recurring(recurring_id)
    cli._show(
        ctx,
        response,
        render.recurring_table(response.recurring_delivery),
        render.deliveries_table(response.occurrences)
        if response.occurrences
        else "No occurrence yet.",
        output=output,
        rows=(pb.RecurringDelivery.DESCRIPTOR, [response.recurring_delivery]),
    )


Changed = (
    pb.PauseRecurringDeliveryResponse
    | pb.ResumeRecurringDeliveryResponse
    | pb.CancelRecurringDeliveryResponse
)


def _change(name: str, call: Callable[[Client, int], Changed], doc: str) -> None:
    """`campaign recurring NAME ID`: one change of state, then the recurring delivery."""

    @recurring_app.command(name, help=doc)
    def command(ctx: typer.Context, recurring_id: RecurringId) -> None:
        response = call(cli._client(ctx), recurring_id)
        cli._show(ctx, response, render.recurring_table(response.recurring_delivery))


_change(
    "pause",
    Client.pause_recurring,
    "No occurrence starts until it is resumed; pausing again changes nothing.",
)
_change(
    "resume",
    Client.resume_recurring,
    "Occurrences start again from the next interval boundary; missed ones are skipped.",
)
_change(
    "cancel",
    Client.cancel_recurring,
    "No occurrence starts ever again (those started go on: `deliveries stop` stops one).",
)
