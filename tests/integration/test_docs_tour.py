"""The README's and docs/cli.md's tours, run as written on a fresh clone (issue 13).

The documents are the single source: their runnable steps are the ```sh blocks right
after a `<!-- tour -->` line (`<!-- tour: needs grpcurl -->`: only where grpcurl is
installed); other blocks are examples for the eye. The clone is of HEAD, in a new
temporary directory (mode 0700, as `mktemp -d` makes it), run as the current user (root
here). `make run` starts in the background, as in a second terminal, on the clone's own
embedded PostgreSQL; the blocks run in order in one shell, then `make run` gets the
Ctrl-C a terminal sends.

Two liberties, both about this machine rather than the documents: the clone's .venv is a
link to this checkout's (creating one takes minutes), with the clone's code first on
PYTHONPATH so that the clone is what runs; and the ports are free ones (DELIVERY_PORT,
MTA_PORT and CAMPAIGN_ADDRESS, which the tours honour), not 50051 and 50052, which a
developer's `make run` may hold.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools import run_pair
from tools.processes import REPO_ROOT

DOCUMENTS = ("README.md", "docs/cli.md")
_MARKER = re.compile(r"^<!-- tour(?:: needs (?P<needs>[\w-]+))? -->$")
STARTUP_S = 120.0
TOUR_S = 300.0
STOP_S = 30.0


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    needs: str | None
    text: str


def tour_blocks(root: Path) -> list[Block]:
    """The marked ```sh blocks of the documents, in reading order."""
    found = []
    for document in DOCUMENTS:
        lines = (root / document).read_text("utf-8").splitlines()
        for i, line in enumerate(lines):
            marker = _MARKER.match(line.strip())
            if marker is None:
                continue
            assert lines[i + 1] == "```sh", f"{document}:{i + 1}: a tour marker before no ```sh"
            end = lines.index("```", i + 2)
            text = "\n".join(lines[i + 2 : end])
            found.append(Block(document, i + 3, marker["needs"], text))
    return found


def words(command: str) -> str:
    """A shell command with its line continuations and spacing undone."""
    return " ".join(command.replace("\\\n", " ").split())


def operator_command(text: str) -> str:
    match = re.search(r"export CAMPAIGN_TOKEN=\$\(.*?\| jq -r \.token\)", words(text))
    assert match, f"no operator command in:\n{text}"
    return match.group(0)


class _Shown:
    address = "127.0.0.1:50051"
    pid = 1


def test_one_operator_command_everywhere() -> None:
    """The README, docs/cli.md and `make run`'s banner create the tours' operator alike."""
    shown = run_pair.banner(
        _Shown(),
        _Shown(),
        "postgresql://",
        token_file=".data/admin.token",
        has_token=True,
        campaign=".venv/bin/campaign",
    )
    readme, cli = ((REPO_ROOT / d).read_text("utf-8") for d in DOCUMENTS)
    command = operator_command(readme)
    assert operator_command(cli) == command
    assert operator_command(shown) == command
    assert "--validity 1h" not in "\n".join(b.text for b in tour_blocks(REPO_ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def clone() -> Iterator[Path]:
    """A fresh clone of HEAD in a new temporary directory; its embedded PostgreSQL is
    stopped and the directory removed afterwards."""
    stamp = REPO_ROOT / ".venv" / ".installed"
    if not stamp.exists():
        pytest.skip("this checkout has no installed .venv (make run makes it)")
    top = Path(tempfile.mkdtemp(prefix="tour-"))
    where = top / "clone"
    try:
        subprocess.run(
            ["git", "clone", "--quiet", str(REPO_ROOT), str(where)], check=True, timeout=120
        )
        (where / ".venv").symlink_to(REPO_ROOT / ".venv")
        # Older than the venv's stamp, so that make does not reinstall into the shared venv.
        before = stamp.stat().st_mtime - 1
        os.utime(where / "pyproject.toml", (before, before))
        yield where
    finally:
        subprocess.run(
            [sys.executable, "-m", "tools.embedded_pg", "stop", "--data-dir", ".data/pg"],
            cwd=where,
            env=_environment(where),
            capture_output=True,
            timeout=180,
            check=False,
        )
        shutil.rmtree(top, ignore_errors=True)


def _environment(where: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAMPAIGN_", "PYTEST"))}
    env.pop("DATABASE_URL", None)
    env.pop("VIRTUAL_ENV", None)
    return env | {"PYTHONPATH": str(where), "COLUMNS": "100"} | more


def _wait_for(path: Path, text: str, process: subprocess.Popen[bytes], within: float) -> str:
    deadline = time.monotonic() + within
    while True:
        shown = path.read_text(errors="replace")
        if text in shown:
            return shown
        assert process.poll() is None, f"make run exited with {process.returncode}:\n{shown}"
        assert time.monotonic() < deadline, f"no {text!r} within {within} s:\n{shown}"
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes], banner: str) -> None:
    """Ctrl-C, as a terminal sends it to its foreground process group; if `make run` is
    not gone in time, its services are killed by the pids its banner gave."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        for pid in re.findall(r"\(pid (\d+)\)", banner):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        pytest.fail(f"make run did not stop within {STOP_S} s of a Ctrl-C")


def test_the_tours_run_on_a_fresh_clone(clone: Path) -> None:
    blocks = [b for b in tour_blocks(clone) if b.needs is None or shutil.which(b.needs)]
    assert blocks, "the documents mark no tour step"
    delivery, mta = _free_port(), _free_port()
    env = _environment(
        clone,
        DELIVERY_PORT=str(delivery),
        MTA_PORT=str(mta),
        CAMPAIGN_ADDRESS=f"127.0.0.1:{delivery}",
    )
    log = clone.parent / "make-run.log"
    with log.open("wb") as out:
        make_run = subprocess.Popen(
            ["make", "run"],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    banner = ""
    try:
        banner = _wait_for(log, "Ctrl-C stops both services", make_run, STARTUP_S)
        script = "\n".join(
            f"echo '=== {b.document}:{b.line}'\n"
            + b.text.replace("localhost:50051", f"localhost:{delivery}")
            for b in blocks
        )
        started = time.monotonic()
        tour = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOUR_S,
            check=False,
        )
        took = time.monotonic() - started
        assert tour.returncode == 0, (
            f"the tour failed (exit {tour.returncode}) after {took:.0f} s:\n{tour.stdout}\n"
            f"{tour.stderr}\n--- make run:\n{log.read_text(errors='replace')[-4000:]}"
        )
    finally:
        _stop(make_run, banner)
    printed = tour.stdout
    # What the tour says a user sees: the import, the analysis, the final figures after the
    # watch, the refreshed ones, and CSV.
    assert "Imported 12 profiles from profiles-sample.csv" in printed, printed
    assert re.search(r"Final\s+yes", printed), printed
    assert re.search(r"KPIs of delivery \d+, recomputed", printed), printed
    assert "message_id,delivery_id,profile_id,email,status" in printed, printed
    assert "No token: creating it in the database of `make run`" in tour.stderr, tour.stderr
