"""The embedded PostgreSQL of `make run` and `make test`: start is idempotent and connectable."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from tools import embedded_pg


@pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL")), reason="DATABASE_URL is set: no embedded server used"
)
def test_start_is_idempotent_and_returns_a_working_uri() -> None:
    first = embedded_pg.start()
    assert first.startswith("postgresql://")
    assert embedded_pg.start() == first
    assert embedded_pg.is_running()
    with psycopg.connect(first, connect_timeout=10) as conn:
        row = conn.execute("SHOW max_connections").fetchone()
    assert row == (embedded_pg.SERVER_SETTINGS["max_connections"],)


def test_make_url_swaps_only_the_database() -> None:
    for base in (
        embedded_pg.uri(),
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgresql://u%40x:p%3Aw@[::1]:5433/db?sslmode=disable&application_name=a%20b",
        "host=/tmp/a\\ b,h2 port=1,2 dbname=x user=y",
    ):
        expected = psycopg.conninfo.conninfo_to_dict(base) | {"dbname": "t_1"}
        url = embedded_pg.make_url(base, dbname="t_1")
        assert url.startswith("postgresql://")
        assert psycopg.conninfo.conninfo_to_dict(url) == expected


def test_a_server_that_cannot_be_run_is_one_line_saying_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """initdb that cannot even be started (here not executable; as root, a directory on the
    way closed to the server's user) is one line naming the way out, for `make run` to
    print, not a PermissionError's traceback."""
    binaries = tmp_path / "bin"
    binaries.mkdir()
    (binaries / "initdb").write_text("#!/bin/sh\n")
    monkeypatch.setattr(embedded_pg, "bin_dir", lambda: binaries)
    with pytest.raises(embedded_pg.EmbeddedPgError) as raised:
        embedded_pg.start(tmp_path / "pg")
    said = str(raised.value)
    assert said.startswith(f"cannot run {binaries / 'initdb'}"), said
    assert "\n" not in said and "DATABASE_URL" in said, said
