"""The mutation score of each module `make mutate` mutates, and the mutants that survived.

Reads what `mutmut run` left under mutants/ (run from the repository root). Exits 1
when a module scores under the threshold or was not run through, so that
`make mutate` fails as a test would.

    python -m tools.mutation_report [--threshold 90] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files

# A mutant that makes the tests time out or fail to type-check was caught too.
DETECTED = frozenset({"killed", "timeout", "caught by type check"})


@dataclass
class Module:
    path: Path
    statuses: Counter[str] = field(default_factory=Counter)
    # (mutant, status) of each mutant the tests let through.
    survivors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def mutants(self) -> int:
        return self.statuses.total() - self.statuses["skipped"]

    @property
    def detected(self) -> int:
        return sum(self.statuses[s] for s in DETECTED)

    @property
    def score(self) -> float:
        return 100.0 * self.detected / self.mutants if self.mutants else 100.0

    @property
    def complete(self) -> bool:
        return self.statuses["not checked"] == 0


def read_results() -> list[Module]:
    modules = []
    for path in sorted(walk_mutatable_files()):
        data = SourceFileMutationData(path=path)
        data.load()
        module = Module(path)
        for name, exit_code in sorted(data.exit_code_by_key.items()):
            status = status_by_exit_code[exit_code]
            module.statuses[status] += 1
            if status not in DETECTED and status != "skipped":
                module.survivors.append((name, status))
        if module.statuses:
            modules.append(module)
    return modules


def changed_lines(mutant: str, path: Path) -> list[str]:
    """The diff lines of a mutant, without its headers and context."""
    diff = get_diff_for_mutant(mutant, path=path).splitlines()[2:]
    return [line for line in diff if line.startswith(("-", "+"))]


def table(modules: list[Module], markdown: bool) -> list[str]:
    header = ("module", "mutants", "killed", "survived", "other", "score")
    rows = [
        (
            str(m.path),
            str(m.mutants),
            str(m.detected),
            str(m.statuses["survived"]),
            str(m.mutants - m.detected - m.statuses["survived"]),
            f"{m.score:.1f} %",
        )
        for m in modules
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
        return lines + ["| " + " | ".join(row) + " |" for row in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    # The module name left-aligned, the figures right-aligned.
    return [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=90.0, help="lowest score, percent")
    parser.add_argument("--markdown", action="store_true", help="the table only, in Markdown")
    args = parser.parse_args(argv)
    modules = read_results()
    if not modules:
        print("no mutation results under mutants/: run `make mutate`", file=sys.stderr)
        return 1
    if args.markdown:
        print("\n".join(table(modules, markdown=True)))
        return 0
    for module in modules:
        if module.survivors:
            print(f"\n{module.path}: {len(module.survivors)} not killed")
        for name, status in module.survivors:
            print(f"  {name} ({status})")
            for line in changed_lines(name, module.path):
                print(f"      {line}")
    print()
    print("\n".join(table(modules, markdown=False)))
    failing = [m for m in modules if m.score < args.threshold or not m.complete]
    for m in failing:
        reason = "not run through" if not m.complete else f"under {args.threshold:g} %"
        print(f"{m.path}: {reason}", file=sys.stderr)
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
