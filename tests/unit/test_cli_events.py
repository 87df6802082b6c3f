"""`campaign events` and `campaign logs timeline` without a service: a feed in memory
behind the client's methods. Paging to the end, following until Ctrl-C, the cursor file
(resumed, written atomically, never ahead of what is printed), every format; the event
table; the client reopening a broken watch after its last cursor."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from delivery.v1 import delivery_service_pb2 as pb
from rich.console import Console
from typer.testing import CliRunner, Result

from campaign_cli import app as cli
from campaign_cli import events, render
from campaign_cli.client import Client
from campaign_cli.errors import CliError

RUNNER = CliRunner(env={"COLUMNS": "200", "CAMPAIGN_TOKEN": None, "CAMPAIGN_ADDRESS": None})
KIND = pb.DeliveryEventKind


def event(n: int, kind: pb.DeliveryEventKind.ValueType = KIND.DELIVERY_EVENT_KIND_RELAYED) -> Any:
    e = pb.DeliveryEvent(
        event_id=f"relayed:{n}",
        delivery_id=3,
        message_id=n,
        address=f"u{n}@example.com",
        kind=kind,
        cursor=f"c{n}",
    )
    e.event_time.FromMilliseconds(1_700_000_000_000 + n)
    return e


class Feed:
    """The client's feed methods over `committed`: pages as ListDeliveryEvents gives them
    (up to the page size asked), a watch as WatchDeliveryEvents streams it (the start's
    cursor first, then one event per message), which raises KeyboardInterrupt (Ctrl-C) once
    it has streamed every event."""

    def __init__(self, committed: list[pb.DeliveryEvent]) -> None:
        self.committed = committed
        self.requests: list[Any] = []

    def _after(self, cursor: str) -> int:
        return next((i + 1 for i, e in enumerate(self.committed) if e.cursor == cursor), 0)

    def delivery_events(self, request: pb.ListDeliveryEventsRequest) -> Any:
        self.requests.append(request)
        start = self._after(request.after)
        examined = self.committed[start : start + request.page_size]
        end = start + len(examined)
        return pb.ListDeliveryEventsResponse(
            events=[e for e in examined if not request.kinds or e.kind in request.kinds],
            next_cursor=self.committed[end - 1].cursor if end else request.after,
            caught_up=end == len(self.committed),
        )

    def watch_delivery_events(self, request: pb.WatchDeliveryEventsRequest) -> Iterator[Any]:
        self.requests.append(request)
        start = len(self.committed) if request.from_end else self._after(request.after)
        yield pb.WatchDeliveryEventsResponse(cursor=f"c{start}" if start else request.after)
        for e in self.committed[start:]:
            yield pb.WatchDeliveryEventsResponse(events=[e], cursor=e.cursor)
        raise KeyboardInterrupt

    def message_timeline(self, delivery_id: int, message_id: int) -> Any:
        return pb.GetMessageTimelineResponse(events=[event(message_id)])


@pytest.fixture
def feed(monkeypatch: pytest.MonkeyPatch) -> Feed:
    committed = Feed([event(n) for n in range(1, 6)])
    monkeypatch.setattr(cli, "_client", lambda ctx: committed)
    return committed


def run(*args: str, code: int = 0) -> Result:
    result = RUNNER.invoke(cli.app, list(args), prog_name="campaign")
    assert result.exit_code == code, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


def ids(out: str) -> list[str]:
    return [json.loads(line)["event_id"] for line in out.splitlines()]


def test_every_page_to_the_end_then_resumed_from_the_cursor_file(
    feed: Feed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "PAGE", 2)
    cursor = tmp_path / "cursor"
    first = run("events", "--format", "json", "--cursor-file", str(cursor))
    assert ids(first.stdout) == [f"relayed:{n}" for n in range(1, 6)]
    assert json.loads(first.stdout.splitlines()[0])["cursor"] == "c1"
    assert [r.after for r in feed.requests] == ["", "c2", "c4"]
    assert first.stderr == "Last cursor: c5\n"
    assert cursor.read_text() == "c5\n"
    assert list(tmp_path.iterdir()) == [cursor]  # no temporary file left

    # Two more committed: the next run prints only those; --after loses to the file.
    feed.committed += [event(6), event(7)]
    again = run("--json", "events", "--cursor-file", str(cursor), "--after", "c1")
    assert ids(again.stdout) == ["relayed:6", "relayed:7"]
    assert cursor.read_text() == "c7\n"
    # Nothing new: nothing printed, the cursor stays.
    assert run("--json", "events", "--cursor-file", str(cursor)).stdout == ""
    assert run("events", "--after", "c7").stdout == "No events.\n"


def test_kinds_filter_what_is_printed_not_where_the_cursor_goes(feed: Feed) -> None:
    feed.committed[2] = event(3, KIND.DELIVERY_EVENT_KIND_HARD_BOUNCE)
    out = run("events", "--kind", "hard-bounce", "--kind", "hard-bounce", "--format", "json")
    assert ids(out.stdout) == ["relayed:3"]
    assert list(feed.requests[0].kinds) == [KIND.DELIVERY_EVENT_KIND_HARD_BOUNCE]
    assert out.stderr == "Last cursor: c5\n"


def test_follow_stops_on_ctrl_c_with_the_cursor_saved(feed: Feed, tmp_path: Path) -> None:
    cursor = tmp_path / "cursor"
    cursor.write_text("c2\n")
    out = run("events", "--follow", "--format", "csv", "--cursor-file", str(cursor), code=0)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["event_id"] for r in rows] == ["relayed:3", "relayed:4", "relayed:5"]
    assert rows[0]["kind"] == "RELAYED" and rows[0]["smtp_reply.code"] == ""
    assert out.stdout.count("event_id") == 1  # one header for every message
    assert (feed.requests[0].after, feed.requests[0].from_end) == ("c2", False)
    assert cursor.read_text() == "c5\n"
    assert out.stderr == "Last cursor: c5\n"


def test_an_export_cut_short_by_ctrl_c_exits_130(
    feed: Feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(request: Any) -> Any:
        if request.after:
            raise KeyboardInterrupt
        return Feed.delivery_events(feed, request)

    monkeypatch.setattr(events, "PAGE", 2)
    monkeypatch.setattr(feed, "delivery_events", interrupted)
    out = run("events", "--format", "json", code=events.INTERRUPTED)
    assert ids(out.stdout) == ["relayed:1", "relayed:2"]
    assert out.stderr == "Last cursor: c2\n"


def test_from_end_only_learns_where_the_end_is(feed: Feed, tmp_path: Path) -> None:
    cursor = tmp_path / "cursor"
    out = run("events", "--from-end", "--cursor-file", str(cursor))
    assert feed.requests[0].from_end
    assert (out.stdout, out.stderr) == ("No events.\n", "Last cursor: c5\n")
    assert cursor.read_text() == "c5\n"
    # The next run resumes from the file: --from-end applies to a first run only.
    feed.committed.append(event(6))
    assert ids(run("--json", "events", "--from-end", "--cursor-file", str(cursor)).stdout) == [
        "relayed:6"
    ]
    both = run("events", "--from-end", "--after", "c1", code=2)
    assert "give --after or --from-end, not both" in both.output


def test_a_table_has_one_header_for_every_batch(feed: Feed) -> None:
    out = run("events", "--follow").stdout
    assert out.count("Time (UTC)") == 1
    for n in range(1, 6):
        assert f"u{n}@example.com" in out


def test_logs_lists_by_default_and_timeline_is_its_subcommand(feed: Feed) -> None:
    timeline = run("logs", "timeline", "3", "4").stdout
    assert "Time (UTC)" in timeline and "relayed" in timeline
    assert (
        json.loads(run("--json", "logs", "timeline", "3", "4").stdout)["events"][0]["event_id"]
        == "relayed:4"
    )
    assert "relayed:4" in run("logs", "timeline", "3", "4", "--format", "csv").stdout
    assert "MESSAGE_ID" in run("logs", "timeline", "3", code=2).output
    assert "timeline" in run("logs", "--help").stdout
    assert "--status" in run("logs", "7", "--help").stdout  # `logs 7` is `logs list 7`


def test_every_kind_has_a_name() -> None:
    names = {events.kind_value(k) for k in events.Kind}
    assert names == set(pb.DeliveryEventKind.values()) - {KIND.DELIVERY_EVENT_KIND_UNSPECIFIED}


def test_the_event_table() -> None:
    bounce = event(9, KIND.DELIVERY_EVENT_KIND_SOFT_BOUNCE)
    bounce.attempt, bounce.reason = 2, pb.FAILURE_REASON_MAILBOX_FULL
    bounce.smtp_reply.CopyFrom(
        pb.SmtpReply(code=452, enhanced_status="4.2.2", text="<u9@example.com>: Mailbox full")
    )
    click = event(10, KIND.DELIVERY_EVENT_KIND_CLICKED)
    click.link_index = 1
    out = io.StringIO()
    console = Console(file=out, width=300, markup=False, emoji=False, highlight=False)
    console.print(render.events_table([bounce, click], with_message=True))
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    header = lines[0].split()
    assert header == [
        "Time", "(UTC)", "Delivery", "Message", "Address", "Kind", "Attempt", "Reason",
        "Link", "SMTP", "reply",
    ]  # fmt: skip
    assert lines[2].split() == [
        "2023-11-14", "22:13:20.009", "3", "9", "u9@example.com", "soft", "bounce", "2",
        "mailbox", "full", "452", "4.2.2", "<u9@example.com>:", "Mailbox", "full",
    ]  # fmt: skip
    assert lines[3].split()[-2:] == ["clicked", "1"]


def test_a_cursor_file_that_cannot_be_written_is_one_error(tmp_path: Path) -> None:
    assert events.read_cursor(tmp_path / "missing") is None
    (tmp_path / "empty").write_text("\n")
    assert events.read_cursor(tmp_path / "empty") is None
    with pytest.raises(CliError, match="cannot write the cursor file"):
        events.save_cursor(tmp_path / "no-such-dir" / "cursor", "c1")


class Broken(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "gone"

    def trailing_metadata(self) -> tuple[()]:
        return ()


class Call:
    def __init__(self, cursors: list[str], error: grpc.RpcError | None) -> None:
        self.cursors, self.error, self.cancelled = cursors, error, False

    def __iter__(self) -> Iterator[pb.WatchDeliveryEventsResponse]:
        for c in self.cursors:
            yield pb.WatchDeliveryEventsResponse(cursor=c)
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self.cancelled = True


def test_a_broken_watch_is_reopened_after_its_last_cursor() -> None:
    unavailable = Broken(grpc.StatusCode.UNAVAILABLE)
    calls = [Call(["a", "b"], unavailable), Call(["c"], unavailable), Call([], unavailable)]
    asked: list[pb.WatchDeliveryEventsRequest] = []

    def watch(request: Any, metadata: Any) -> Call:
        asked.append(pb.WatchDeliveryEventsRequest(after=request.after, from_end=request.from_end))
        return calls[len(asked) - 1]

    with Client("127.0.0.1:1", "token", 1.0) as client:
        client._stub.WatchDeliveryEvents = watch
        got: list[str] = []
        with pytest.raises(CliError, match="cannot reach the delivery service"):
            for message in client.watch_delivery_events(
                pb.WatchDeliveryEventsRequest(from_end=True)
            ):
                got.append(message.cursor)
    assert got == ["a", "b", "c"]
    assert [(r.after, r.from_end) for r in asked] == [("", True), ("b", False), ("c", False)]
    assert all(c.cancelled for c in calls)
