"""Optional py-spy profiles of the services during a workload (`--profile DIR`).

The benchmark never needs py-spy: without --profile nothing here runs. With it,
`py-spy record` samples each service process for the length of the workload, and
the collapsed stacks are summed into the functions that cost the most: by their
own time (the leaf of the stack) and with what they call (anywhere in the stack).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

# Samples per second: enough for a workload of a minute, light on a 2-core machine.
RATE = 50
TOP = 15


def py_spy() -> str | None:
    """The py-spy executable: the venv's, else one on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


# The project's own code: the "total time" list shows these functions only, since the
# event loop and start-up frames above them are in every stack and say nothing.
OWN_CODE = ("delivery_service/", "mta_stub/")


@dataclass(frozen=True)
class Summary:
    samples: int
    own: list[tuple[str, float]]
    total: list[tuple[str, float]]
    packages: list[tuple[str, float]]

    def render(self, title: str) -> str:
        lines = [f"{title}: {self.samples} samples at {RATE} Hz (idle excluded)"]
        lines.append("  own time by package (where the CPU is spent):")
        lines += [f"    {share:5.1f}%  {name}" for name, share in self.packages]
        lines.append("  own time (the function itself):")
        lines += [f"    {share:5.1f}%  {name}" for name, share in self.own]
        lines.append("  total time of the project's functions (with what they call):")
        lines += [f"    {share:5.1f}%  {name}" for name, share in self.total]
        return "\n".join(lines)


def _package(frame: str) -> str:
    """`func (psycopg/types/array.py:174)` -> `psycopg`; `<frozen runpy>` and the like kept."""
    where = frame.rpartition("(")[2].rstrip(")")
    path = where.rpartition(":")[0] or where
    return path.split("/")[0] if "/" in path else path


def summarize(collapsed: Path, top: int = TOP) -> Summary:
    """The top functions of a py-spy `--format raw` file (one `f1;f2;...;fn count` per line)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        weight = int(n)
        frames = stack.split(";")
        # The first frame is the thread ("process 123:..." / thread name): not a function.
        functions = [f for f in frames if "(" in f] or frames
        samples += weight
        own[functions[-1]] += weight
        packages[_package(functions[-1])] += weight
        for name in set(functions):
            if any(part in name for part in OWN_CODE) and "__main__.py" not in name:
                total[name] += weight

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, 100.0 * n / samples) for name, n in counter.most_common(top)]

    if samples == 0:
        return Summary(0, [], [], [])
    return Summary(samples, shares(own), shares(total), shares(packages)[:8])


class Profiler:
    """Records the given processes while a workload runs; a no-op when out_dir is None."""

    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.executable = py_spy() if out_dir is not None else None
        if out_dir is not None and self.executable is None:
            raise SystemExit(
                "--profile needs py-spy: .venv/bin/python -m pip install py-spy "
                "(the benchmark itself does not)"
            )
        self.summaries: dict[str, str] = {}

    @contextlib.contextmanager
    def record(self, stage: str, pids: Mapping[str, int]) -> Iterator[None]:
        if self.out_dir is None or self.executable is None:
            yield
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        running: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        for name, pid in pids.items():
            out = self.out_dir / f"{stage}-{name}.txt"
            log = open(self.out_dir / f"{stage}-{name}.log", "wb")  # noqa: SIM115
            command = [
                self.executable,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(RATE),
                "--format",
                "raw",
                "--function",
                # Sampling without pausing the process: a little less exact, far less costly.
                "--nonblocking",
                "--output",
                str(out),
            ]
            running.append((name, out, subprocess.Popen(command, stdout=log, stderr=log)))
            log.close()
        try:
            yield
        finally:
            for _, _, process in running:
                # py-spy writes its output when interrupted, as after a Ctrl-C.
                process.send_signal(signal.SIGINT)
            for name, out, process in running:
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                if out.exists():
                    text = summarize(out).render(f"{stage}, {name}")
                    (self.out_dir / f"{stage}-{name}.summary.txt").write_text(text + "\n")
                    self.summaries[f"{stage}/{name}"] = text
