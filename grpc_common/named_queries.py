"""The one loader of named SQL files: each query starts with `-- name: <name>`, then a
one-line description. The service, the stub's spool and the benchmark load theirs with it.

A piece of SQL that several queries of a file share starts with `-- part: <name>`
instead; a query writes `{part:<name>}` where the piece goes. A part is not a query."""

from __future__ import annotations

import re
from importlib import resources

_PART = re.compile(r"\{part:(\w+)\}")


def parse(text: str) -> dict[str, str]:
    """The queries of a file by name, without their comment lines and final semicolon,
    with the parts they name in place."""
    found: dict[str, dict[str, str]] = {"name": {}, "part": {}}
    chunks = re.split(r"^-- (name|part): ", text, flags=re.MULTILINE)[1:]
    for kind, chunk in zip(chunks[::2], chunks[1::2], strict=True):
        name, _, body = chunk.partition("\n")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        found[kind][name.strip()] = "\n".join(lines).strip().rstrip(";")
    # Each part ends its line: a comment at its end must not take in what follows.
    parts = {name: part + "\n" for name, part in found["part"].items()}
    return {
        name: _PART.sub(lambda m: parts[m.group(1)], query) for name, query in found["name"].items()
    }


def load(package: str, *path: str) -> dict[str, str]:
    """The queries of a .sql file shipped in a package, e.g. load("mta_stub", "spool.sql")."""
    folder = resources.files(package)
    for part in path:
        folder = folder / part
    return parse(folder.read_text("utf-8"))
