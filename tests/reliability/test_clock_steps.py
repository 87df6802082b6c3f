"""The host clock stepping by ten minutes during a delivery (issue 15, item 4).

A test cannot step the host's clock, so both processes read wall-clock time through one
seam (`grpc_common.clock`, behind `delivery_service.clock` and `mta_stub.clock`), offset
by the seconds in the file `--clock-offset-file` names; the test rewrites the files, the
service's first and the stub's right after, as one host's step reaches both within a
tick. Monotonic time (sleeps, timeouts, the grace after a validity) does not step.

What is right, and asserted:

- **Forwards, +10 min, past the validity end** (the delivery of N messages under the
  seeded mix, which has soft bounces retried until the validity ends). The stub's steps
  that the step made overdue fire at once, each reporting the time it was scheduled
  for, before the validity end: the retries into delivery deliver, those that would run
  past the end expire there. The service sees the validity over at once, but waits the
  grace for late feedback on the monotonic clock (3 s here), so the step does not eat it:
  that burst lands before the figures are final. The delivery finishes, exact: every
  message one final status equal to the stub's record, KPIs = ComputeStats, 0 repaired,
  each event applied once, none refused, none left unacknowledged.
- **Backwards, -10 min.** The validity end is a date, read on the stepped clock: when an
  unstepped clock would have ended the delivery (the validity end and the grace, by the
  real time), it is not finished (SENT: every message relayed, feedback still awaited),
  since the host's clock is ten minutes short of the end. The stub's retries wait for
  its clock to reach them, as a real MTA's queue would. Events the stub stamped before
  the step reach a service whose clock is now ten minutes behind them: they are not "in
  the future" (the check compares with the latest time the service read, which a
  backward step does not take back), so none is refused. The test then lets ten minutes
  pass at once (both clocks set one second short of the validity end), and the delivery
  finishes no earlier than the validity end and the grace, and within a few seconds of
  it, by the stepped clock; exact as above.

Not covered (docs/reliability.md, "Clock steps"): the two clocks disagreeing by more than
the relay-record check's 5 minutes, as when one host's clock steps and not the other's, or
a relay batch is acknowledged across a backward step: such events are refused as
`event_time`, counted and logged.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import psycopg
from delivery.v1 import delivery_service_pb2 as pb

from tests.conftest import Servers
from tests.reliability import scenario
from tests.reliability.test_faults import scrape
from tests.support.processes import ServerProcess, wait_until

N = 3000
STEP = 600.0
GRACE = 3.0
REFUSED = 'delivery_feedback_events_refused_total{reason="%s"}'


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def set_offset(path: Path, seconds: float) -> None:
    """Replaces the offset file whole, so a process never reads it half-written."""
    part = path.with_suffix(".part")
    part.write_text(f"{seconds:.6f}\n", encoding="utf-8")
    os.replace(part, path)


class Pair:
    """The delivery service and its stub, each with its own clock offset file."""

    def __init__(self, servers: Servers, database_url: str, tmp_path: Path) -> None:
        self.database_url = database_url
        self.service_clock = tmp_path / "service.offset"
        self.stub_clock = tmp_path / "stub.offset"
        self.metrics_port = _port()
        self.stub: ServerProcess = servers.mta_stub("--clock-offset-file", str(self.stub_clock))
        self.service: ServerProcess = servers.delivery_service(
            database_url,
            self.stub.address,
            "--clock-offset-file",
            str(self.service_clock),
            "--finalize-grace",
            str(GRACE),
            "--metrics-port",
            str(self.metrics_port),
        )

    def step(self, offset: float) -> float:
        """Both clocks offset by `offset` seconds (the service's first); the monotonic time."""
        set_offset(self.service_clock, offset)
        set_offset(self.stub_clock, offset)
        return time.monotonic()

    def times(self, delivery_id: int) -> tuple[float, float | None]:
        """The delivery's validity end and finish time, epoch seconds (the finish as the
        service's clock said it)."""
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM validity_end_time)::float8,"
                " extract(epoch FROM finish_time)::float8 FROM deliveries WHERE id = %s",
                (delivery_id,),
            ).fetchone()
        assert row is not None
        return row[0], row[1]

    def state(self, delivery_id: int) -> int:
        got = scenario.call(
            self.service.address, "GetDelivery", pb.GetDeliveryRequest(delivery_id=delivery_id)
        )
        state: int = got.delivery.state
        return state

    def refused(self) -> dict[str, float]:
        return {
            reason: scrape(self.metrics_port, REFUSED % reason)
            for reason in ("event_time", "not_relayed", "not_delivered", "delivery_state")
        }

    def start(self, validity: int) -> int:
        """A delivery of N messages; returns once all are relayed and feedback flows."""
        delivery_id = scenario.start_delivery(
            self.database_url, self.service.address, self.stub.address, N, validity
        )
        wait_until(
            lambda: (
                scenario.count(self.database_url, scenario.RELAYED) == N
                and scenario.count(self.database_url, scenario.EVENTS) >= N // 3
            ),
            20,
            message="every message relayed and feedback flowing",
        )
        return delivery_id

    def finish_exact(self, delivery_id: int) -> tuple[float, str]:
        """Waits for FINISHED; checks it exact; the monotonic time it was seen and a summary."""
        scenario.wait_finished(lambda: self.service.address, delivery_id, timeout=30)
        seen = time.monotonic()
        outcome = scenario.assert_exact(
            self.database_url, self.service.address, self.stub.address, delivery_id, N
        )
        assert scenario.unacknowledged(self.stub.address, delivery_id) == 0
        assert self.refused() == dict.fromkeys(self.refused(), 0.0), "no event refused"
        events = scenario.count(self.database_url, scenario.EVENTS)
        summary = (
            f"delivered {outcome.delivered}, hard {outcome.hard_bounced}, expired "
            f"{outcome.expired}, opened {outcome.opened}, clicked {outcome.clicked}; "
            f"{events} events applied once, 0 refused, 0 repaired, lost 0, double-counted 0"
        )
        return seen, summary


def test_a_forward_step_past_the_validity_end(
    fresh_db_url: str, servers: Servers, tmp_path: Path
) -> None:
    pair = Pair(servers, fresh_db_url, tmp_path)
    started = time.monotonic()
    delivery_id = pair.start(validity=15)
    validity_end, _ = pair.times(delivery_id)
    applied = scenario.count(fresh_db_url, scenario.EVENTS)
    before_end = validity_end - time.time()
    assert before_end > 5, "the step comes well inside the validity"

    stepped = pair.step(+STEP)
    seen, summary = pair.finish_exact(delivery_id)
    _, finish_time = pair.times(delivery_id)
    assert finish_time is not None
    # By the stepped clock: after the end, and the grace waited on the monotonic clock.
    assert finish_time >= validity_end + GRACE
    assert seen - stepped >= GRACE - 0.3, "the step did not eat the grace for late feedback"
    assert seen - stepped <= GRACE + 10
    print(
        f"\nclock +{STEP:.0f} s, {before_end:.1f} s before the validity end, at {applied} "
        f"events applied: FINISHED "
        f"{seen - stepped:.1f} s after the step (grace {GRACE:.0f} s), "
        f"{finish_time - validity_end:.1f} s after the validity end by the stepped clock; "
        f"{summary}; {time.monotonic() - started:.1f} s from the confirmation"
    )


def test_a_backward_step_keeps_the_validity_end(
    fresh_db_url: str, servers: Servers, tmp_path: Path
) -> None:
    pair = Pair(servers, fresh_db_url, tmp_path)
    started = time.monotonic()
    delivery_id = pair.start(validity=12)
    validity_end, _ = pair.times(delivery_id)
    applied = scenario.count(fresh_db_url, scenario.EVENTS)
    pair.step(-STEP)

    # Past the end and the grace by the real time: by the host's clock, ten minutes short.
    real_end = validity_end + GRACE + 1.5
    while time.time() < real_end:
        assert pair.state(delivery_id) != pb.STATE_FINISHED, "finished before its validity end"
        time.sleep(0.25)
    # What the stub had fired was taken in, none of it refused as "in the future".
    wait_until(
        lambda: scenario.unacknowledged(pair.stub.address, delivery_id) == 0,
        10,
        message="the events fired before the step acknowledged",
    )
    held = scenario.count(fresh_db_url, scenario.EVENTS)
    assert pair.refused()["event_time"] == 0
    assert pair.state(delivery_id) != pb.STATE_FINISHED

    # Ten minutes pass at once: both clocks one second short of the validity end.
    jumped = pair.step(validity_end - 1.0 - time.time())
    seen, summary = pair.finish_exact(delivery_id)
    _, finish_time = pair.times(delivery_id)
    assert finish_time is not None
    assert validity_end + GRACE <= finish_time <= validity_end + GRACE + 10
    assert validity_end <= finish_time <= validity_end + STEP + 10
    print(
        f"\nclock -{STEP:.0f} s at {applied} events applied: not finished "
        f"{real_end - validity_end:.1f} s past the validity end by the real time, {held} "
        f"events applied by then, 0 refused; once the clocks reached the end, FINISHED "
        f"{seen - jumped:.1f} s later, {finish_time - validity_end:.1f} s after the validity "
        f"end by the stepped clock (grace {GRACE:.0f} s); {summary}; "
        f"{time.monotonic() - started:.1f} s from the confirmation"
    )
