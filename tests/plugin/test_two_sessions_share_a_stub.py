"""Two pytest processes at once against one stub, each with its own scoped scenario: the
plugin's promise to teams that share a stub. Each runs a generated test file of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from mta_stub.pytest_plugin import MtaStub

# Each suite scopes a scenario to its delivery, waits for the other suite to be running
# too (a file each, in a folder both see), then relays and checks every fate.
SUITE = """
import time
from pathlib import Path

from mta.v1 import mta_service_pb2 as mta

RENDEZVOUS = Path({rendezvous!r})


def test_my_scenario_and_mine_only(mta_stub, mta_stub_scenario, mta_stub_relayer):
    delivery = mta_stub.ids.delivery()
    mta_stub_scenario(delivery_id=delivery, mix=mta.Mix({mix}))
    (RENDEZVOUS / {name!r}).touch()
    deadline = time.monotonic() + 60
    while len(list(RENDEZVOUS.iterdir())) < 2:
        assert time.monotonic() < deadline, "the other suite never started"
        time.sleep(0.02)
    emails = [f"user{{i}}@example.com" for i in range(200)]
    ids = mta_stub_relayer.relay(delivery, emails)
    fates = mta_stub_relayer.wait_final(ids, timeout=60)
    assert set(fates.values()) == {{mta.{final}}}
    kinds = {{e.kind for e in mta_stub_relayer.events()}}
    assert kinds == {{{kinds}}}
    outcomes = mta_stub.controls.wait_outcomes(
        lambda o: o.unacknowledged_events == 0, delivery_id=delivery
    )
    assert outcomes.accepted == 200
"""


def test_two_pytest_processes_share_one_stub(mta_stub: MtaStub, tmp_path: Path) -> None:
    rendezvous = tmp_path / "running"
    rendezvous.mkdir()
    suites = {
        "bounces": dict(
            mix="hard_bounce_rate=1.0",
            final="EVENT_KIND_HARD_BOUNCE",
            kinds="mta.EVENT_KIND_HARD_BOUNCE",
        ),
        "retries": dict(
            mix="soft_then_delivered_rate=1.0, max_retries=2",
            final="EVENT_KIND_DELIVERED",
            kinds="mta.EVENT_KIND_SOFT_BOUNCE, mta.EVENT_KIND_DELIVERED",
        ),
    }
    runs = {}
    for name, fields in suites.items():
        folder = tmp_path / name
        folder.mkdir()
        source = SUITE.format(rendezvous=str(rendezvous), name=name, **fields)
        (folder / f"test_{name}.py").write_text(textwrap.dedent(source))
        runs[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--rootdir",
                str(folder),
                "--mta-stub",
                mta_stub.address,
                str(folder),
            ],
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    outputs = {name: run.communicate(timeout=180)[0] for name, run in runs.items()}
    for name, run in runs.items():
        assert run.returncode == 0, f"suite {name} failed:\n{outputs[name]}"
        assert "1 passed" in outputs[name]
