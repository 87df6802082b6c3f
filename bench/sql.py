"""The benchmark's queries, loaded once by name from queries.sql (the service's own layout)."""

from __future__ import annotations

import re
from pathlib import Path


def _load() -> dict[str, str]:
    text = (Path(__file__).parent / "queries.sql").read_text("utf-8")
    queries: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = chunk.partition("\n")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name.strip()] = "\n".join(lines).strip().rstrip(";")
    return queries


QUERIES = _load()


def q(name: str) -> bytes:
    """A query by name, as bytes: psycopg then takes it as is (no literal-string typing)."""
    return QUERIES[name].encode()
