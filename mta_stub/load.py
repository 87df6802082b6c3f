"""Drives messages at a feedback mix and a rate through the MTA stub, directly or through a
running pair, and prints the rate achieved and the feedback lag.

    python -m mta_stub.load --messages 100000 --rate 20000 --mix seeded
    python -m mta_stub.load --pair 127.0.0.1:50051 --token "$TOKEN" --messages 20000 --rate 5000

Straight to the stub (the default), this command is the relaying client: it relays its
messages in batches at the rate asked, on a stream and with ids of its own (so it can
share a stub with tests and other load runs), acknowledges the feedback, and reports the
relay rate achieved, the lag of each event (from the time the stub gives it to its
arrival) and the lag of each message's final fate (from its relay to the arrival of its
delivery, hard bounce or expiry).

Through a pair (--pair, with an operator token that may create, prepare and confirm
deliveries), it is a caller of the delivery service: it confirms deliveries of --batch
recipients at the rate asked and reports the rate the stub received them at and, per
delivery, the time from ConfirmSend until every message was relayed and until every
final fate was committed by the delivery service (the stub's GetOutcomes: nothing in
flight, nothing unacknowledged).

The mix is a scenario scoped to the run's own deliveries: the stub must run with
--test-controls (`make run` starts it so), unless --mix is `none`. Exit code 0 when every
message reached its final fate in time, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from delivery.v1 import delivery_service_pb2 as ds
from delivery.v1 import delivery_service_pb2_grpc as ds_grpc
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from mta.v1 import mta_service_pb2 as mta

from mta_stub import presets
from mta_stub.testing import FINAL_KINDS, MAX_BATCH, Ids, Relayer, StubControls

# A mix that leaves the scenario alone (the stub's own, or the address patterns).
NO_SCENARIO = "none"
MIXES = {
    "seeded": presets.SEEDED_MIX,
    # The seeded mix without soft bounces until expiry: every fate is final within seconds.
    "seeded-no-expiry": presets.variant(soft_until_expiry_rate=0.0),
    "delivered": mta.Mix(),
}
# Relay batches a stub run may have unacknowledged at once.
_WINDOW = 16
# The fields of the stub's mixes that mta.v1.Mix lacks (scenarios.MixExtras).
_MIX_EXTRAS = ("complaint_rate", "late_hard_bounce_rate", "late_hard_bounce_max_ms")


@dataclass
class Report:
    """What a run measured; seconds and messages per second."""

    mode: str
    messages: int
    rate_asked: float
    duration_s: float = 0.0
    rate_achieved: float = 0.0
    complete: bool = False
    final_fates: dict[str, int] = field(default_factory=dict)
    # Stub mode: what came after delivery reports (COMPLAINT, LATE_HARD_BOUNCE, IGNORED)
    # by the time every message had its final fate; complaints and late bounces of a mix
    # come from the stub's --mix-extras, which mta.v1.Mix cannot carry.
    after_delivery: dict[str, int] = field(default_factory=dict)
    events: int = 0
    event_lag_s: dict[str, float] = field(default_factory=dict)
    final_lag_s: dict[str, float] = field(default_factory=dict)
    relayed_lag_s: dict[str, float] = field(default_factory=dict)
    deliveries: list[int] = field(default_factory=list)


def spread(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and max of values (empty: {})."""
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 4)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 4)}


def parse_mix(text: str) -> mta.Mix | str | None:
    """A named mix, `none`, or a JSON object of mta.v1.Mix fields."""
    if text == NO_SCENARIO:
        return NO_SCENARIO
    if text in MIXES:
        return MIXES[text]
    try:
        return json_format.Parse(text, mta.Mix())
    except json_format.ParseError as exc:
        extra = next((name for name in _MIX_EXTRAS if name in text), None)
        if extra is not None:
            raise argparse.ArgumentTypeError(
                f"{extra} is no field of mta.v1.Mix: start the stub with --mix-extras "
                f"(env MTA_MIX_EXTRAS) to give its mixes complaints and late bounces"
            ) from None
        names = ", ".join([*MIXES, NO_SCENARIO])
        raise argparse.ArgumentTypeError(
            f"{text!r}: one of {names}, or a JSON object of mta.v1.Mix fields ({exc})"
        ) from None


class _Pacer:
    """Sleeps so that `amount` units go out at `rate` per second from the first call."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0.0

    def wait(self, amount: float) -> None:
        if self.rate > 0:
            delay = self.start + self.sent / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.sent += amount


class _Feedback:
    """Feedback as it arrives (the relayer's reading thread): lags and final fates."""

    def __init__(self, first_id: int, batch: int, count: int) -> None:
        self.first_id, self.batch, self.count = first_id, batch, count
        self.sent_at: list[float] = []
        self.event_lags: list[float] = []
        self.final_lags: list[float] = []
        self.fates: dict[int, int] = {}
        self.after_delivery: dict[str, int] = {}
        self.done = threading.Event()

    def on_batch(self, batch: mta.FeedbackBatch, _arrived: float) -> None:
        now = time.time()
        for event in batch.events:
            when = event.event_time.seconds + event.event_time.nanos / 1e9
            self.event_lags.append(now - when)
            after = _after_delivery(event, self.fates.get(event.message_id))
            if after:
                self.after_delivery[after] = self.after_delivery.get(after, 0) + 1
            if event.kind in FINAL_KINDS and event.message_id not in self.fates:
                self.fates[event.message_id] = event.kind
                index = (event.message_id - self.first_id) // self.batch
                if 0 <= index < len(self.sent_at):
                    self.final_lags.append(now - self.sent_at[index])
        if len(self.fates) >= self.count:
            self.done.set()


def _after_delivery(event: mta.FeedbackEvent, fate: int | None) -> str:
    """What an event is if it came after its message's delivery report; '' if not."""
    if event.kind == mta.EVENT_KIND_COMPLAINT:
        return "COMPLAINT"
    if event.kind == mta.EVENT_KIND_IGNORED:
        return "IGNORED"
    if event.kind == mta.EVENT_KIND_HARD_BOUNCE and fate == mta.EVENT_KIND_DELIVERED:
        return "LATE_HARD_BOUNCE"
    return ""


def run_stub(args: argparse.Namespace) -> Report:
    """The stub mode: this process relays, on its own stream."""
    report = Report("stub", args.messages, args.rate)
    controls = StubControls(args.stub)
    ids = Ids()
    delivery = ids.delivery()
    report.deliveries = [delivery]
    message_ids = ids.messages(args.messages)
    feedback = _Feedback(message_ids.start, args.batch, args.messages)
    client = f"mta-stub-load-{os.getpid()}-{secrets.token_hex(3)}"
    if args.mix != NO_SCENARIO:
        controls.set_scenario(delivery_id=delivery, mix=args.mix)
    relayer = Relayer(args.stub, client, ids=ids, keep_events=False, on_feedback=feedback.on_batch)
    try:
        pacer = _Pacer(args.rate)
        content = mta.Content(subject="Load", body="<p>Load</p>", links=["https://example.com/"])
        expire = _in(args.validity)
        pending = []
        for start in range(0, args.messages, args.batch):
            chunk = message_ids[start : start + args.batch]
            pacer.wait(len(chunk))
            feedback.sent_at.append(time.time())
            messages = [mta.Message(message_id=i, email=f"load{i}@example.com") for i in chunk]
            pending.append(
                relayer.send(
                    mta.RelayBatch(
                        delivery_id=delivery, content=content, expire_time=expire, messages=messages
                    )
                )
            )
            while len(pending) >= _WINDOW:
                pending.pop(0).result(args.timeout)
        for ack in pending:
            ack.result(args.timeout)
        report.duration_s = round(time.monotonic() - pacer.start, 3)
        report.rate_achieved = round(args.messages / max(report.duration_s, 1e-9), 1)
        report.complete = feedback.done.wait(args.timeout)
    finally:
        relayer.close()
        if args.mix != NO_SCENARIO:
            controls.clear_scenario(delivery_id=delivery)
        controls.close()
    report.final_fates = _kind_counts(feedback.fates.values())
    report.after_delivery = dict(sorted(feedback.after_delivery.items()))
    report.events = len(feedback.event_lags)
    report.event_lag_s = spread(feedback.event_lags)
    report.final_lag_s = spread(feedback.final_lags)
    return report


def run_pair(args: argparse.Namespace) -> Report:
    """The pair mode: deliveries confirmed through the delivery service at the rate asked."""
    report = Report("pair", args.messages, args.rate)
    controls = StubControls(args.stub)
    metadata = [("authorization", f"Bearer {args.token}")]
    tag = secrets.token_hex(3)
    confirmed_at: dict[int, float] = {}
    sizes: dict[int, int] = {}
    relayed: dict[int, float] = {}
    done: dict[int, float] = {}
    accepted: dict[int, int] = {}
    with grpc.insecure_channel(args.pair) as channel:
        api = ds_grpc.DeliveryServiceStub(channel)
        pacer = _Pacer(args.rate)
        try:
            for number, start in enumerate(range(0, args.messages, args.batch)):
                size = min(args.batch, args.messages - start)
                pacer.wait(size)
                delivery = _confirm(api, metadata, controls, args, size, f"{tag}-{number}")
                confirmed_at[delivery] = time.time()
                sizes[delivery] = size
                report.deliveries.append(delivery)
                _poll(controls, sizes, confirmed_at, relayed, done, accepted)
            deadline = time.monotonic() + args.timeout
            while len(done) < len(sizes) and time.monotonic() < deadline:
                time.sleep(0.1)
                _poll(controls, sizes, confirmed_at, relayed, done, accepted)
        finally:
            if args.mix != NO_SCENARIO:
                for delivery in sizes:
                    controls.clear_scenario(delivery_id=delivery)
    first = min(confirmed_at.values(), default=time.time())
    last_relayed = max(relayed.values(), default=first)
    report.duration_s = round(last_relayed - first, 3)
    report.rate_achieved = round(sum(accepted.values()) / max(report.duration_s, 1e-9), 1)
    report.complete = len(done) == len(sizes)
    report.relayed_lag_s = spread([relayed[d] - confirmed_at[d] for d in relayed])
    report.final_lag_s = spread([done[d] - confirmed_at[d] for d in done])
    totals = [controls.outcomes(delivery_id=d) for d in sizes]
    report.final_fates = {
        "DELIVERED": sum(o.delivered for o in totals),
        "HARD_BOUNCE": sum(o.hard_bounced for o in totals),
        "EXPIRED": sum(o.expired for o in totals),
    }
    controls.close()
    return report


def _confirm(
    api: ds_grpc.DeliveryServiceStub,
    metadata: list[tuple[str, str]],
    controls: StubControls,
    args: argparse.Namespace,
    size: int,
    label: str,
) -> int:
    recipients = [ds.Recipient(email=f"load-{label}-{i}@example.com") for i in range(size)]
    created = api.CreateDelivery(
        ds.CreateDeliveryRequest(
            label=f"load {label}",
            content=ds.Content(subject="Load", body="<p>Load</p>"),
            target=ds.Target(recipients=ds.RecipientList(recipients=recipients)),
            validity_period=duration_pb2.Duration(seconds=int(args.validity)),
            feedback_mode=ds.FEEDBACK_MODE_EFS,
        ),
        metadata=metadata,
        timeout=60,
    )
    delivery: int = created.delivery.id
    api.PrepareDelivery(
        ds.PrepareDeliveryRequest(delivery_id=delivery), metadata=metadata, timeout=120
    )
    if args.mix != NO_SCENARIO:
        # Before the relay: the stub decides a message's fate when it accepts it.
        controls.set_scenario(delivery_id=delivery, mix=args.mix)
    api.ConfirmSend(ds.ConfirmSendRequest(delivery_id=delivery), metadata=metadata, timeout=60)
    return delivery


def _poll(
    controls: StubControls,
    sizes: dict[int, int],
    confirmed_at: dict[int, float],
    relayed: dict[int, float],
    done: dict[int, float],
    accepted: dict[int, int],
) -> None:
    for delivery, size in sizes.items():
        if delivery in done:
            continue
        outcomes = controls.outcomes(delivery_id=delivery)
        now = time.time()
        accepted[delivery] = outcomes.accepted
        if outcomes.accepted >= size:
            relayed.setdefault(delivery, now)
            if outcomes.in_flight == 0 and outcomes.unacknowledged_events == 0:
                done[delivery] = now


def _in(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int((time.time() + seconds) * 1e9))
    return stamp


def _kind_counts(kinds: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in kinds:
        name = mta.EventKind.Name(kind).removeprefix("EVENT_KIND_")
        counts[name] = counts.get(name, 0) + 1
    return counts


def render(report: Report) -> str:
    """The report as lines of text."""
    lines = [
        f"mode             {report.mode}",
        f"messages         {report.messages}",
        f"rate asked       {report.rate_asked:g}/s"
        if report.rate_asked
        else "rate asked       as fast as possible",
        f"rate achieved    {report.rate_achieved:g}/s over {report.duration_s:g} s",
        f"complete         {'yes' if report.complete else 'no (timed out)'}",
        "final fates      " + ", ".join(f"{k} {v}" for k, v in sorted(report.final_fates.items())),
    ]
    if report.mode == "stub":
        if report.after_delivery:
            lines.append(
                "after delivery   "
                + ", ".join(f"{k} {v}" for k, v in report.after_delivery.items())
            )
        lines.append(f"events received  {report.events}")
        lines.append(f"event lag (s)    {_lags(report.event_lag_s)}")
        lines.append(f"final-fate lag   {_lags(report.final_lag_s)}")
    else:
        lines.append(f"deliveries       {len(report.deliveries)}")
        lines.append(f"relayed lag (s)  {_lags(report.relayed_lag_s)}")
        lines.append(f"committed lag    {_lags(report.final_lag_s)}")
    return "\n".join(lines)


def _lags(values: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:g}" for k, v in values.items()) or "-"


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog="python -m mta_stub.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parse.add_argument("--messages", type=_positive_int, required=True, help="how many")
    parse.add_argument(
        "--rate", type=float, default=0.0, help="messages per second; 0: as fast as possible"
    )
    parse.add_argument(
        "--mix",
        type=parse_mix,
        default="seeded-no-expiry",
        help=f"the feedback mix: {', '.join(MIXES)}, {NO_SCENARIO} (the stub's own scenario),"
        " or a JSON object of mta.v1.Mix fields (default seeded-no-expiry)",
    )
    parse.add_argument(
        "--stub", default="127.0.0.1:50052", help="the MTA stub (default 127.0.0.1:50052)"
    )
    parse.add_argument("--pair", default="", help="the delivery service: go through the pair")
    parse.add_argument(
        "--token", default=os.environ.get("TOKEN", ""), help="the operator token (env TOKEN)"
    )
    parse.add_argument(
        "--batch",
        type=_positive_int,
        default=1000,
        help=f"messages per relay batch, or recipients per delivery with --pair (at most "
        f"{MAX_BATCH} to the stub)",
    )
    parse.add_argument("--validity", type=float, default=600.0, help="seconds (default 600)")
    parse.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the fates (300)"
    )
    parse.add_argument("--json", action="store_true", help="print the report as JSON")
    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parse = parser()
    args = parse.parse_args(argv)
    if args.pair and not args.token:
        parse.error("--pair needs --token (or TOKEN): an operator who may send deliveries")
    if not args.pair and args.batch > MAX_BATCH:
        parse.error(f"--batch: at most {MAX_BATCH} messages in a relay batch")
    try:
        report = run_pair(args) if args.pair else run_stub(args)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        print(f"load: {getattr(code, 'name', code)}: {exc.details()}", file=sys.stderr)
        return 1
    print(json.dumps(dataclasses.asdict(report)) if args.json else render(report))
    return 0 if report.complete else 1


if __name__ == "__main__":
    sys.exit(main())
