"""docs/stub-fixture.md's examples, run exactly as written there: another team's code and
its tests, in a folder of their own, in a pytest process that has only the plugin."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "stub-fixture.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def block_with(text: str) -> str:
    (found,) = [block for block in blocks() if text in block]
    return found


def test_the_documented_tests_pass(tmp_path: Path) -> None:
    (tmp_path / "newsletter.py").write_text(block_with('"""Sends a newsletter'))
    (tmp_path / "test_newsletter.py").write_text(block_with("def test_hard_bounced_"))
    (tmp_path / "test_direct.py").write_text(block_with("def test_soft_bounces_are_retried"))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
