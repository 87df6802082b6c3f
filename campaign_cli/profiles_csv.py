"""Profiles from a CSV file, read row by row and handed out in chunks: never the whole file."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from delivery.v1 import delivery_service_pb2 as pb

from campaign_cli.errors import CliError

REQUIRED = ("profile_id", "email")
OPTIONAL = ("quarantined", "segments")
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0", ""}


@dataclass
class Chunk:
    """Consecutive profiles of the file, and the line each one came from."""

    profiles: list[pb.Profile]
    lines: list[int]


def _flag(text: str, where: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise CliError(None, f"{where}: quarantined must be true or false, not {text!r}")


def chunks(lines: Iterable[str], size: int, source: str) -> Iterator[Chunk]:
    """The profiles of CSV `lines` (columns profile_id,email[,quarantined][,segments]).

    Segments are separated by ';'. Errors name the file and line.
    """
    reader = csv.DictReader(lines, strict=True)
    try:
        _check_header(reader.fieldnames or [], source)
        chunk = Chunk([], [])
        for row in reader:
            chunk.profiles.append(_profile(row, f"{source} line {reader.line_num}"))
            chunk.lines.append(reader.line_num)
            if len(chunk.profiles) == size:
                yield chunk
                chunk = Chunk([], [])
    except csv.Error as exc:
        raise CliError(None, f"{source}: not valid CSV: {exc}") from None
    if chunk.profiles:
        yield chunk


def _check_header(columns: Sequence[str], source: str) -> None:
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise CliError(
            None,
            f"{source}: the header lacks {', '.join(missing)} "
            f"(columns: {', '.join(REQUIRED + OPTIONAL)})",
        )
    unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise CliError(None, f"{source}: unknown columns {', '.join(unknown)}")


def _profile(row: dict[str | Any, str | Any], where: str) -> pb.Profile:
    if None in row:
        raise CliError(None, f"{where}: more fields than the header has")
    return pb.Profile(
        profile_id=(row["profile_id"] or "").strip(),
        email=(row["email"] or "").strip(),
        quarantined=_flag(row.get("quarantined") or "", where),
        segments=[s.strip() for s in (row.get("segments") or "").split(";") if s.strip()],
    )
