"""`campaign events`: the delivery event feed (ListDeliveryEvents, WatchDeliveryEvents),
and `campaign logs timeline`: one message's events (GetMessageTimeline); role
read_deliveries.

Registered on `campaign_cli.app` as alerts.py is. A table, JSON lines or CSV
(`--format`); off a terminal the table is as wide as its rows, never cut.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from delivery.v1 import delivery_service_pb2 as pb

from campaign_cli import app as cli
from campaign_cli import render
from campaign_cli.errors import CliError
from campaign_cli.render import Format

# Events one ListDeliveryEvents page examines (the service takes up to 5,000): large
# enough to catch up at the database's speed, small enough to print as it comes.
PAGE = 1000
# Exit codes of a run stopped by Ctrl-C: --follow's normal end, or an export cut short.
FOLLOW_STOPPED = 0
INTERRUPTED = 130


class Kind(enum.StrEnum):
    """delivery.v1.DeliveryEventKind's values (tests/unit/test_cli_events.py pairs them)."""

    RELAYED = "relayed"
    DELIVERED = "delivered"
    HARD_BOUNCE = "hard-bounce"
    SOFT_BOUNCE = "soft-bounce"
    EXPIRED = "expired"
    OPENED = "opened"
    CLICKED = "clicked"
    COMPLAINT = "complaint"
    IGNORED = "ignored"


def kind_value(kind: Kind) -> pb.DeliveryEventKind.ValueType:
    return pb.DeliveryEventKind.Value(f"DELIVERY_EVENT_KIND_{kind.name}")


def read_cursor(path: Path) -> str | None:
    """The cursor saved in `path`; None while there is none (no file yet, or empty)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(None, f"cannot read the cursor file {path}: {exc}") from None
    return text or None


def save_cursor(path: Path, cursor: str) -> None:
    """`cursor` in `path`, atomically: written beside it, then renamed over it, so that a
    run killed at any moment leaves the old cursor or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(cursor + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise CliError(None, f"cannot write the cursor file {path}: {exc}") from None


class Printer:
    """Prints the feed a batch (a page, a stream message) at a time and keeps the cursor.

    The cursor moves only past what is flushed to stdout, and the cursor file is written
    after the flush: a run killed at any moment has a file at or behind its output, so a
    resume may repeat events (with the same ids), never skip one.
    """

    def __init__(self, how: Format, cursor: str, cursor_file: Path | None) -> None:
        self.how = how
        self.cursor = cursor
        self.cursor_file = cursor_file
        self.printed = 0
        self._start = cursor
        # After the last event printed, flushed or not.
        self._printed_cursor = cursor
        self._console = cli.make_console() if how is Format.TABLE else None
        if how is Format.CSV:
            render.write_csv(pb.DeliveryEvent.DESCRIPTOR, [])

    def batch(self, events: Sequence[pb.DeliveryEvent], cursor: str) -> None:
        """`events`, then the position after everything the batch examined: `cursor`."""
        if self._console is not None:
            if events:
                table = render.events_table(events, with_message=True, header=not self.printed)
                self._console.print(table)
        else:
            # One event at a time, so that Ctrl-C between two keeps the cursor exact.
            for event in events:
                if self.how is Format.JSON:
                    print(render.dumps(event))
                else:
                    render.write_csv(pb.DeliveryEvent.DESCRIPTOR, [event], header=False)
                self._printed_cursor = event.cursor
        self.printed += len(events)
        self._printed_cursor = cursor
        self.flush()

    def flush(self) -> None:
        """stdout flushed, then the cursor after it saved."""
        sys.stdout.flush()
        if self._printed_cursor != self.cursor:
            if self.cursor_file is not None:
                save_cursor(self.cursor_file, self._printed_cursor)
            self.cursor = self._printed_cursor

    def reader_gone(self) -> None:
        """stdout's reader went away (`| head`): the cursor stays at the last batch
        flushed whole (a failed write may drop what it held, and a flush after it then
        succeeds), and Python's own flush at exit goes nowhere instead of failing."""
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        self._printed_cursor = self.cursor

    def finish(self, failed: bool) -> None:
        """What was printed flushed and its cursor saved; the cursor on stderr, unless
        the run `failed` before it moved (the error is then the one line)."""
        try:
            self.flush()
        except BrokenPipeError:
            self.reader_gone()
        if failed and self.cursor == self._start:
            return
        if self._console is not None and not self.printed and not failed:
            self._console.print("No events.")
        print(f"Last cursor: {self.cursor or '(the start of the feed)'}", file=sys.stderr)


@cli.app.command("events")
def follow_events(
    ctx: typer.Context,
    delivery: cli.DeliveryFilter = None,
    kind: Annotated[
        list[Kind] | None,
        typer.Option("--kind", show_default=False, help="Only events of this kind; repeatable."),
    ] = None,
    after: Annotated[
        str,
        typer.Option(metavar="CURSOR", help="Start after this cursor (a Last cursor printed)."),
    ] = "",
    from_end: Annotated[
        bool, typer.Option("--from-end", help="Start at the end: only events from now on.")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", help="Then stream new events as they are committed, until Ctrl-C."
        ),
    ] = False,
    cursor_file: Annotated[
        Path | None,
        typer.Option(
            dir_okay=False,
            show_default=False,
            help="Start after the cursor this file holds, if it exists (else at --after or "
            "--from-end); write the latest cursor to it after each batch.",
        ),
    ] = None,
    output: cli.Output = None,
) -> None:
    """Print the delivery event feed in commit order: every page up to the end of what is
    committed (or, with --follow, then each new event live). The last cursor goes to
    stderr at the end; resume after it with --after, or keep it in --cursor-file."""
    if from_end and after:
        raise typer.BadParameter("give --after or --from-end, not both", param_hint="'--from-end'")
    saved = read_cursor(cursor_file) if cursor_file is not None else None
    start = saved if saved is not None else after
    # A cursor file that holds a cursor wins: a cron job's first run starts at the end,
    # the next ones where the last stopped.
    at_end = from_end and saved is None
    kinds = [kind_value(k) for k in dict.fromkeys(kind or [])]
    printer = Printer(cli.chosen(ctx, output), start, cursor_file)
    client = cli._client(ctx)
    stopped: int | None = None
    failed = True
    try:
        if follow or at_end:
            request = pb.WatchDeliveryEventsRequest(
                delivery_id=delivery or 0, kinds=kinds, after=start, from_end=at_end
            )
            for message in client.watch_delivery_events(request):
                printer.batch(message.events, message.cursor)
                # Without --follow, the first message says where the end is: done.
                if not follow:
                    break
        else:
            while True:
                page = client.delivery_events(
                    pb.ListDeliveryEventsRequest(
                        delivery_id=delivery or 0, kinds=kinds, after=printer.cursor, page_size=PAGE
                    )
                )
                printer.batch(page.events, page.next_cursor)
                if page.caught_up:
                    break
        failed = False
    except KeyboardInterrupt:
        stopped, failed = FOLLOW_STOPPED if follow else INTERRUPTED, False
    except BrokenPipeError:
        printer.reader_gone()
        stopped, failed = 0, False  # the reader has all it wanted (`| head`)
    finally:
        # Errors too: what was printed keeps its cursor, and the user learns it.
        printer.finish(failed)
    if stopped is not None:
        raise typer.Exit(stopped)


@cli.logs_app.command("timeline")
def timeline(
    ctx: typer.Context,
    delivery_id: cli.DeliveryId,
    message_id: Annotated[
        int, typer.Argument(metavar="MESSAGE_ID", min=1, help="The message's id (as logs lists).")
    ],
    output: cli.Output = None,
) -> None:
    """Show one message's events in order: relayed, bounces, delivered, opened, clicked."""
    response = cli._client(ctx).message_timeline(delivery_id, message_id)
    shown = (
        render.events_table(response.events)
        if response.events
        else f"No events for message {message_id} of delivery {delivery_id}."
    )
    cli._show(
        ctx,
        response,
        shown,
        output=output,
        rows=(pb.DeliveryEvent.DESCRIPTOR, response.events),
    )
