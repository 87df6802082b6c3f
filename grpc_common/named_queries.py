"""The one loader of named SQL files: each query starts with `-- name: <name>`, then a
one-line description. The service, the stub's spool and the benchmark load theirs with it."""

from __future__ import annotations

import re
from importlib import resources


def parse(text: str) -> dict[str, str]:
    """The queries of a file by name, without their comment lines and final semicolon."""
    queries: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = chunk.partition("\n")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name.strip()] = "\n".join(lines).strip().rstrip(";")
    return queries


def load(package: str, *path: str) -> dict[str, str]:
    """The queries of a .sql file shipped in a package, e.g. load("mta_stub", "spool.sql")."""
    folder = resources.files(package)
    for part in path:
        folder = folder / part
    return parse(folder.read_text("utf-8"))
