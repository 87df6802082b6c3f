"""What the CLI prints, without a server: tables never cut a cell, CSV rows of any message."""

from __future__ import annotations

import csv
import io

import pytest
from delivery.v1 import delivery_service_pb2 as pb
from rich.console import Console

from campaign_cli import render

LONG = "a-recipient-with-a-rather-long-local-part-0123456789@example.com"


def test_a_narrow_terminal_wraps_the_recipient_and_cuts_nothing() -> None:
    log = pb.SendingLog(message_id=7, delivery_id=1, email=LONG, status=pb.SENDING_STATUS_SENT)
    console = Console(width=80, force_terminal=True, color_system=None, record=True)
    console.print(render.logs_table([log]))
    lines = console.export_text().splitlines()
    assert not any("…" in line for line in lines)
    # The recipient's cell, read down its column: the whole address, folded.
    first = next(i for i, line in enumerate(lines) if "a-recip" in line)
    start = lines[first].index("a-recip")
    width = len(lines[first][start:].split(" ")[0])
    pieces = [line[start : start + width].strip() for line in lines[first:]]
    assert "".join(pieces) == LONG, lines


def test_csv_columns_come_from_the_message_set_or_not(capsys: pytest.CaptureFixture[str]) -> None:
    full = pb.Delivery(id=2, label="a, b", content=pb.Content(subject="Hi", links=["x", "y"]))
    full.confirm_time.FromSeconds(0)
    render.write_csv(pb.Delivery.DESCRIPTOR, [pb.Delivery(id=1), full])
    first, second = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert list(first) == list(second)
    assert (first["id"], first["content.subject"], first["confirm_time"]) == ("1", "", "")
    assert (second["label"], second["content.links"]) == ("a, b", "x;y")
    assert second["confirm_time"] == "1970-01-01T00:00:00Z"
    assert second["state"] == "" and first["to_deliver"] == "0"


def test_csv_of_nothing_is_its_header(capsys: pytest.CaptureFixture[str]) -> None:
    render.write_csv(pb.SendingLog.DESCRIPTOR, [])
    header = capsys.readouterr().out.splitlines()
    assert header[0].startswith("message_id,delivery_id,profile_id,email,status,")
    assert len(header) == 1
