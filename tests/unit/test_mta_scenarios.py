"""The MTA stub's fates, timelines and spool, without gRPC."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from mta_stub import engine as stub_engine
from mta_stub import scenarios
from mta_stub.engine import Engine, Relayed
from mta_stub.scenarios import (
    UNTIL_EXPIRY,
    BounceReason,
    EventKind,
    Fate,
    Faults,
    Mix,
    Scenario,
    ScenarioError,
    Step,
    Timing,
)
from mta_stub.spool import Scheduled, Spool, Transition

TIMING = Timing(retry_interval=10.0, engagement_delay=2.0)
NOW = 1_000_000.0
FAR = NOW + 1_000_000.0

D = EventKind.DELIVERED
H = EventKind.HARD_BOUNCE
S = EventKind.SOFT_BOUNCE
X = EventKind.EXPIRED
O = EventKind.OPENED  # noqa: E741
C = EventKind.CLICKED


def timeline(fate: Fate, expire_at: float = FAR, now: float = NOW) -> list[Step]:
    steps = [scenarios.first_step(fate, now, expire_at)]
    while (step := scenarios.next_step(fate, steps[-1], expire_at, TIMING)) is not None:
        steps.append(step)
    return steps


def kinds(steps: list[Step]) -> list[tuple[EventKind, int]]:
    return [(step.kind, step.attempt) for step in steps]


def fate_of(email: str, mix: Mix | None = None, message_id: int = 1) -> Fate:
    return scenarios.decide_fate(email, message_id, mix)


# --- patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("hard@example.com", BounceReason.USER_UNKNOWN),
        ("hard-user-unknown@example.com", BounceReason.USER_UNKNOWN),
        ("hard-mailbox-full@example.com", BounceReason.MAILBOX_FULL),
        ("hard-invalid-domain@example.com", BounceReason.INVALID_DOMAIN),
        ("hard-refused@example.com", BounceReason.REFUSED),
        ("hard-unreachable@example.com", BounceReason.UNREACHABLE),
        ("HARD-Refused+campaign-7@Example.COM", BounceReason.REFUSED),
    ],
)
def test_hard_patterns_bounce_once_with_their_reason(email: str, reason: BounceReason) -> None:
    fate = fate_of(email)
    steps = timeline(fate)
    assert kinds(steps) == [(H, 1)]
    assert steps[0].due == NOW
    event = scenarios.make_event(42, 7, fate, steps[0])
    assert event.reason is reason
    assert event.event_id == "42:HARD_BOUNCE:1"


@pytest.mark.parametrize("k", [1, 2, 5, 100])
def test_soft_k_bounces_k_times_then_delivers(k: int) -> None:
    steps = timeline(fate_of(f"soft-{k}@example.com"))
    assert kinds(steps) == [(S, a) for a in range(1, k + 1)] + [(D, k + 1)]
    assert [step.due for step in steps] == [NOW + TIMING.retry_interval * i for i in range(k + 1)]


def test_soft_bounces_report_mailbox_full() -> None:
    fate = fate_of("soft-1@example.com")
    event = scenarios.make_event(42, 7, fate, timeline(fate)[0])
    assert (event.kind, event.reason, event.event_id) == (
        S,
        BounceReason.MAILBOX_FULL,
        "42:SOFT_BOUNCE:1",
    )


def test_soft_k_expires_when_the_next_attempt_falls_after_expiry() -> None:
    # Attempts at +0, +10, +20; the one at +30 would fall after +25.
    steps = timeline(fate_of("soft-5@example.com"), expire_at=NOW + 25)
    assert kinds(steps) == [(S, 1), (S, 2), (S, 3), (X, 3)]
    assert steps[-1].due == NOW + 25


def test_an_attempt_exactly_at_expiry_still_happens() -> None:
    steps = timeline(fate_of("soft-2@example.com"), expire_at=NOW + 20)
    assert kinds(steps) == [(S, 1), (S, 2), (D, 3)]


def test_soft_expire_bounces_every_interval_until_expiry() -> None:
    steps = timeline(fate_of("soft-expire@example.com"), expire_at=NOW + 35)
    assert kinds(steps) == [(S, 1), (S, 2), (S, 3), (S, 4), (X, 4)]
    assert [step.due for step in steps] == [NOW, NOW + 10, NOW + 20, NOW + 30, NOW + 35]


def test_a_message_already_expired_is_given_up_at_once() -> None:
    steps = timeline(fate_of("soft-expire@example.com"), expire_at=NOW - 5)
    assert kinds(steps) == [(X, 1)]


def test_open_delivers_then_opens_after_the_engagement_delay() -> None:
    steps = timeline(fate_of("open@example.com"))
    assert kinds(steps) == [(D, 1), (O, 1)]
    assert steps[1].due == NOW + TIMING.engagement_delay


def test_click_delivers_opens_and_clicks_the_given_link() -> None:
    fate = fate_of("click-3+x@example.com")
    steps = timeline(fate)
    assert kinds(steps) == [(D, 1), (O, 1), (C, 1)]
    assert [step.due for step in steps] == [NOW, NOW + 2, NOW + 4]
    click = scenarios.make_event(42, 7, fate, steps[-1])
    assert (click.link_index, click.event_id) == (3, "42:CLICKED:1")
    assert scenarios.make_event(42, 7, fate, steps[1]).event_id == "42:OPENED:1"


def test_delay_delivers_after_that_many_milliseconds() -> None:
    steps = timeline(fate_of("delay-1500+x@example.com"))
    assert kinds(steps) == [(D, 1)]
    assert steps[0].due == NOW + 1.5
    assert fate_of("Delay-86400000@example.com").delay_ms == scenarios.MAX_DELAY_MS
    assert kinds(timeline(fate_of("delay-0@example.com"))) == [(D, 1)]


def test_a_delay_past_expiry_expires_at_expiry() -> None:
    steps = timeline(fate_of("delay-5000@example.com"), expire_at=NOW + 2)
    assert [(step.kind, step.attempt, step.due) for step in steps] == [(X, 1, NOW + 2)]


@pytest.mark.parametrize(
    "email",
    [
        "someone@example.com",
        "delay-86400001@example.com",
        "delay-123456789@example.com",
        "delay-@example.com",
        "delay@example.com",
        "hard-teapot@example.com",
        "soft-0@example.com",
        "soft-101@example.com",
        "soft-x@example.com",
        "click@example.com",
        "click-@example.com",
        "opener@example.com",
        "x+hard@example.com",
        "",
    ],
)
def test_other_addresses_are_delivered_without_a_mix(email: str) -> None:
    assert scenarios.pattern_fate(email) is None
    assert kinds(timeline(fate_of(email))) == [(D, 1)]


def test_patterns_win_over_the_mix() -> None:
    mix = Mix(seed=1, hard_bounce_rate=1.0)
    assert kinds(timeline(fate_of("open@example.com", mix))) == [(D, 1), (O, 1)]
    assert kinds(timeline(fate_of("anyone@example.com", mix))) == [(H, 1)]


def test_a_message_relayed_after_its_expiry_expires_at_its_expiry() -> None:
    for fate in (fate_of("someone@example.com"), fate_of("delay-100@example.com")):
        assert scenarios.first_step(fate, NOW, NOW - 5) == Step(X, 1, NOW - 5)
    # Relayed at the very instant of expiry: still attempted.
    assert scenarios.first_step(fate_of("someone@example.com"), NOW, NOW) == Step(D, 1, NOW)


def test_a_delay_ending_exactly_at_expiry_still_delivers() -> None:
    steps = timeline(fate_of("delay-2000@example.com"), expire_at=NOW + 2)
    assert steps == [Step(D, 1, NOW + 2)]


def test_the_click_link_is_a_32_bit_index() -> None:
    assert fate_of("click-2147483647@example.com").click_link == 2**31 - 1
    assert scenarios.pattern_fate("click-2147483648@example.com") is None
    assert scenarios.pattern_fate("click-9999999999@example.com") is None


def test_only_the_click_carries_the_link() -> None:
    fate = fate_of("click-3@example.com")
    events = [scenarios.make_event(42, 7, fate, step) for step in timeline(fate)]
    assert [(e.kind, e.link_index) for e in events] == [(D, 0), (O, 0), (C, 3)]


def test_the_local_part_is_before_the_last_at_sign() -> None:
    assert scenarios.local_part("Hard+Campaign@Example.com") == "hard"
    assert scenarios.local_part("soft-1@x@example.com") == "soft-1@x"
    assert scenarios.pattern_fate("soft-1@x@example.com") is None
    # No '@' at all: the whole string is the local part.
    assert scenarios.local_part("Open+x") == "open"


# --- the mix ------------------------------------------------------------------------------

MIX = Mix(
    seed=20240501,
    hard_bounce_rate=0.1,
    soft_then_delivered_rate=0.2,
    soft_until_expiry_rate=0.05,
    open_rate=0.5,
    click_rate=0.4,
    max_retries=4,
)


def test_the_mix_draws_from_seed_and_message_id_only() -> None:
    ids = range(1, 2001)
    first = [scenarios.mix_fate(MIX, i) for i in ids]
    backwards = {i: scenarios.mix_fate(MIX, i) for i in reversed(ids)}
    assert first == [backwards[i] for i in ids]
    other_seed = dataclasses.replace(MIX, seed=MIX.seed + 1)
    assert first != [scenarios.mix_fate(other_seed, i) for i in ids]


def test_the_mix_respects_its_rates() -> None:
    n = 10_000
    fates = [scenarios.mix_fate(MIX, i) for i in range(1, n + 1)]
    hard = sum(f.hard_reason is not BounceReason.UNSPECIFIED for f in fates)
    soft_then = [f.soft_bounces for f in fates if f.soft_bounces > 0]
    until_expiry = sum(f.soft_bounces == UNTIL_EXPIRY for f in fates)
    delivered = [f for f in fates if f.hard_reason is BounceReason.UNSPECIFIED]
    delivered = [f for f in delivered if f.soft_bounces != UNTIL_EXPIRY]
    opened = [f for f in delivered if f.opened]
    clicked = [f for f in opened if f.click_link == 0]
    assert hard / n == pytest.approx(0.1, abs=0.015)
    assert len(soft_then) / n == pytest.approx(0.2, abs=0.02)
    assert until_expiry / n == pytest.approx(0.05, abs=0.01)
    assert len(opened) / len(delivered) == pytest.approx(0.5, abs=0.03)
    assert len(clicked) / len(opened) == pytest.approx(0.4, abs=0.03)
    assert set(soft_then) == {1, 2, 3, 4}
    reasons = Counter(f.hard_reason for f in fates if f.hard_reason is not BounceReason.UNSPECIFIED)
    assert set(reasons) == set(scenarios.HARD_REASONS)
    assert all(not f.opened for f in fates if f.soft_bounces == UNTIL_EXPIRY)


def test_a_mix_of_nothing_delivers_everything() -> None:
    fates = {scenarios.mix_fate(Mix(seed=3), i) for i in range(1, 1001)}
    assert fates == {scenarios.make_fate()}


# --- scenario settings -----------------------------------------------------------------

BASE = Scenario(TIMING)


RATE = "must be between 0 and 1"
FAILING = "hard_bounce_rate + soft_then_delivered_rate + soft_until_expiry_rate must be at most 1"
NEGATIVE = "must not be negative"


@pytest.mark.parametrize(
    ("mix", "faults", "retry", "engagement", "field", "problem"),
    [
        (Mix(hard_bounce_rate=1.5), Faults(), 0, 0, "mix.hard_bounce_rate", RATE),
        (Mix(soft_then_delivered_rate=-0.1), Faults(), 0, 0, "mix.soft_then_delivered_rate", RATE),
        (
            Mix(soft_until_expiry_rate=float("nan")),
            Faults(),
            0,
            0,
            "mix.soft_until_expiry_rate",
            RATE,
        ),
        (Mix(open_rate=2.0), Faults(), 0, 0, "mix.open_rate", RATE),
        (Mix(click_rate=-1.0), Faults(), 0, 0, "mix.click_rate", RATE),
        (
            Mix(hard_bounce_rate=0.5, soft_then_delivered_rate=0.4, soft_until_expiry_rate=0.2),
            Faults(),
            0,
            0,
            "mix.hard_bounce_rate",
            FAILING,
        ),
        (
            Mix(max_retries=-1),
            Faults(),
            0,
            0,
            "mix.max_retries",
            "must be at least 1 (0 means the default, 3)",
        ),
        (None, Faults(reorder_window=-1), 0, 0, "faults.reorder_window", NEGATIVE),
        (None, Faults(drop_stream_every=-2), 0, 0, "faults.drop_stream_every", NEGATIVE),
        (None, Faults(max_delay_ms=-3), 0, 0, "faults.max_delay_ms", NEGATIVE),
        (None, Faults(), -1, 0, "retry_interval_ms", NEGATIVE),
        (None, Faults(), 0, -1, "engagement_delay_ms", NEGATIVE),
    ],
)
def test_bad_settings_name_their_field(
    mix: Mix | None, faults: Faults, retry: int, engagement: int, field: str, problem: str
) -> None:
    with pytest.raises(ScenarioError, match=rf"^{re.escape(field)}: {re.escape(problem)}$"):
        scenarios.update_scenario(BASE, mix, faults, retry, engagement)


def test_settings_replace_mix_and_faults_and_keep_unset_intervals() -> None:
    first = scenarios.update_scenario(BASE, Mix(seed=5), Faults(duplicate_events=True), 0, 0)
    assert first.timing == TIMING
    assert first.mix is not None
    assert first.mix.max_retries == scenarios.DEFAULT_MAX_RETRIES
    second = scenarios.update_scenario(first, None, Faults(), 50, 0)
    assert second == Scenario(Timing(0.05, TIMING.engagement_delay), None, Faults())


def test_set_scenario_intervals_are_in_milliseconds() -> None:
    got = scenarios.update_scenario(BASE, None, Faults(), 0, 250)
    assert got.timing == Timing(TIMING.retry_interval, 0.25)
    got = scenarios.update_scenario(BASE, None, Faults(), 1500, 40)
    assert got.timing == Timing(1.5, 0.04)


def test_max_retries_0_means_the_default_3() -> None:
    # 0 is what a SetScenario without the field sends.
    unset = dataclasses.replace(MIX, max_retries=0)
    got = scenarios.update_scenario(BASE, unset, Faults(), 0, 0).mix
    assert got == dataclasses.replace(MIX, max_retries=scenarios.DEFAULT_MAX_RETRIES)
    for kept in (1, 2, 4):
        mix = dataclasses.replace(MIX, max_retries=kept)
        assert scenarios.update_scenario(BASE, mix, Faults(), 0, 0).mix == mix


def with_rate(mix: Mix, name: str, rate: float) -> Mix:
    changes: dict[str, Any] = {name: rate}
    return dataclasses.replace(mix, **changes)


@pytest.mark.parametrize(
    "name",
    [
        "hard_bounce_rate",
        "soft_then_delivered_rate",
        "soft_until_expiry_rate",
        "open_rate",
        "click_rate",
    ],
)
def test_a_rate_of_exactly_0_or_1_is_accepted(name: str) -> None:
    for rate in (0.0, 1.0):
        mix = with_rate(Mix(seed=1), name, rate)
        assert scenarios.update_scenario(BASE, mix, Faults(), 0, 0).mix == mix


def test_failure_rates_may_sum_to_1_give_or_take_rounding() -> None:
    for rates in ((0.5, 0.3, 0.2), (0.1, 0.2, 0.7), (0.5, 0.5, 1e-9)):
        mix = Mix(1, *rates)
        assert scenarios.update_scenario(BASE, mix, Faults(), 0, 0).mix == mix
    with pytest.raises(ScenarioError, match=r"^mix\.hard_bounce_rate: "):
        scenarios.update_scenario(BASE, Mix(1, 0.5, 0.5, 2e-9), Faults(), 0, 0)


DRAWS = scenarios._uniforms(MIX.seed, 1)


@pytest.mark.parametrize(
    ("rate", "draw", "picked"),
    [
        ("hard_bounce_rate", 0, lambda f: f.hard_reason is not BounceReason.UNSPECIFIED),
        ("soft_then_delivered_rate", 0, lambda f: f.soft_bounces > 0),
        ("soft_until_expiry_rate", 0, lambda f: f.soft_bounces == UNTIL_EXPIRY),
        ("open_rate", 2, lambda f: f.opened),
        ("click_rate", 3, lambda f: f.click_link != scenarios.NO_CLICK),
    ],
)
def test_a_rate_picks_the_draws_below_it(
    rate: str, draw: int, picked: Callable[[Fate], bool]
) -> None:
    # Rates apply to 32-bit draws in [0, 1): a rate r picks a draw d when d < r.
    base = Mix(seed=MIX.seed, open_rate=1.0) if rate == "click_rate" else Mix(seed=MIX.seed)
    at_draw = with_rate(base, rate, DRAWS[draw])
    above = with_rate(base, rate, math.nextafter(DRAWS[draw], 1.0))
    assert not picked(scenarios.mix_fate(at_draw, 1))
    assert picked(scenarios.mix_fate(above, 1))


def test_draws_are_splitmix64() -> None:
    # SplitMix64's reference outputs from state 0: changing the hash would silently
    # change every seeded mix (load tests and benchmarks compare runs by seed).
    golden = 0x9E3779B97F4A7C15
    outputs = [scenarios._splitmix((golden * i) & (2**64 - 1)) for i in (1, 2, 3)]
    assert outputs == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert scenarios._uniforms(0, 0) == (0.0, 0.0, 0xE220A839 / 2**32, 0x7B1DCDAF / 2**32)


# --- the spool ------------------------------------------------------------------------------


def _admission(message_id: int, delivery_id: int = 7, email: str = "x@example.com") -> Transition:
    fate = scenarios.decide_fate(email, message_id, None)
    step = scenarios.first_step(fate, NOW, FAR)
    event = scenarios.make_event(message_id, delivery_id, fate, step)
    return Transition(message_id, delivery_id, event, None)


def test_the_spool_holds_each_message_once() -> None:
    spool = Spool()
    assert spool.accept([_admission(1), _admission(2), _admission(1)]) == (2, 1)
    assert spool.accept([_admission(2), _admission(3)]) == (1, 1)
    outcomes = spool.outcomes(7)
    assert (outcomes.accepted, outcomes.duplicates, outcomes.delivered) == (3, 2, 3)
    assert (outcomes.in_flight, outcomes.unacknowledged_events) == (0, 3)
    assert spool.outcomes(0) == outcomes
    assert spool.outcomes(8).accepted == 0


def test_acked_events_go_for_good_and_unacked_ones_come_back_in_order() -> None:
    spool = Spool()
    spool.accept([_admission(i) for i in range(1, 6)])
    stream = spool.open_stream()
    first = spool.take_feedback(stream, 2)
    second = spool.take_feedback(stream, 2)
    assert (first[0], second[0]) == (1, 2)
    assert spool.ack(stream, 1) == 2
    assert spool.ack(stream, 1) == 0
    assert spool.outcomes(7).unacknowledged_events == 3
    assert spool.close_stream(stream) == 2
    again = spool.open_stream()
    seq, events = spool.take_feedback(again, 10)
    assert seq == 1
    assert [e.message_id for e in events] == [3, 4, 5]


def test_scheduled_steps_fire_in_time_order() -> None:
    spool = Spool()
    fate = scenarios.decide_fate("soft-2@example.com", 1, None)
    step = scenarios.first_step(fate, NOW, FAR)
    nxt = scenarios.next_step(fate, step, FAR, TIMING)
    assert nxt is not None
    follow = Scheduled(nxt.due, 1, 7, FAR, fate, nxt.kind, nxt.attempt)
    spool.accept([Transition(1, 7, scenarios.make_event(1, 7, fate, step), follow)])
    assert spool.outcomes(7).in_flight == 1
    assert spool.next_due() == NOW + 10
    fired: list[Scheduled] = []

    def advance(scheduled: Scheduled) -> Transition:
        fired.append(scheduled)
        s = Step(scheduled.kind, scheduled.attempt, scheduled.due)
        return Transition(1, 7, scenarios.make_event(1, 7, fate, s), None)

    assert spool.fire_due(NOW + 9, 100, advance) == 0
    assert spool.fire_due(NOW + 10, 100, advance) == 1
    assert [(s.kind, s.attempt) for s in fired] == [(S, 2)]
    assert spool.next_due() is None


# --- streams and faults, through the engine ----------------------------------------------


async def _drain(session: stub_engine.Session, count: int) -> list[stub_engine.Batch]:
    batches = []
    received = 0
    async with asyncio.timeout(5):
        while received < count:
            batch = await session.next_batch()
            assert batch is not None
            batches.append(batch)
            received += len(batch.events)
    return batches


def _relayed(ids: range, email: str = "someone@example.com") -> list[Relayed]:
    # The engine runs on the real clock.
    expire_at = time.time() + 3600
    return [Relayed(i, 9, email, expire_at) for i in ids]


async def test_duplicate_events_sends_each_event_again_in_a_later_batch() -> None:
    engine = Engine(Timing(0.05, 0.02))
    engine.set_scenario(None, Faults(duplicate_events=True), 0, 0)
    session = engine.open_session()
    assert engine.relay(_relayed(range(1, 4))) == (3, 0)
    batches = await _drain(session, 6)
    ids = [[e.event_id for e in b.events] for b in batches]
    assert ids[0] == ["1:DELIVERED:1", "2:DELIVERED:1", "3:DELIVERED:1"]
    assert ids[1] == ids[0]
    engine.close_session(session)


async def test_reorder_window_shuffles_within_windows_only() -> None:
    engine = Engine(Timing(0.05, 0.02))
    engine.set_scenario(None, Faults(reorder_window=10), 0, 0)
    session = engine.open_session()
    engine.relay(_relayed(range(1, 1001)))
    batches = await _drain(session, 1000)
    ids = [e.message_id for b in batches for e in b.events]
    assert sorted(ids) == list(range(1, 1001))
    assert ids != sorted(ids)
    for start in range(0, 1000, 10):
        assert sorted(ids[start : start + 10]) == list(range(start + 1, start + 11))
    assert all(len(b.events) <= stub_engine.BATCH_MAX for b in batches)
    engine.close_session(session)


async def test_drop_stream_every_ends_the_stream_after_that_many_batches() -> None:
    engine = Engine(Timing(0.05, 0.02))
    engine.set_scenario(None, Faults(drop_stream_every=2), 0, 0)
    session = engine.open_session()
    engine.relay(_relayed(range(1, 1201)))
    assert await session.next_batch() is not None
    assert await session.next_batch() is not None
    assert await session.next_batch() is None
    engine.close_session(session)
    assert engine.outcomes(9).unacknowledged_events == 1200


async def test_scheduled_steps_reach_the_stream() -> None:
    engine = Engine(Timing(0.02, 0.01))
    engine.start()
    try:
        session = engine.open_session()
        engine.relay(_relayed(range(1, 2), email="soft-2@example.com"))
        batches = await _drain(session, 3)
        ids = [e.event_id for b in batches for e in b.events]
        assert ids == ["1:SOFT_BOUNCE:1", "1:SOFT_BOUNCE:2", "1:DELIVERED:3"]
        for batch in batches:
            session.ack(batch.seq)
        outcomes = engine.outcomes(9)
        assert (outcomes.soft_bounced, outcomes.delivered, outcomes.in_flight) == (1, 1, 0)
        assert outcomes.unacknowledged_events == 0
        with pytest.raises(stub_engine.AckError):
            session.ack(batches[-1].seq + 1)
        engine.close_session(session)
    finally:
        await engine.close()


async def test_a_delayed_message_is_in_flight_until_its_delay_is_over() -> None:
    engine = Engine(Timing(0.05, 0.02))
    engine.start()
    try:
        session = engine.open_session()
        accepted_at = time.time()
        engine.relay(_relayed(range(1, 2), email="delay-100@example.com"))
        outcomes = engine.outcomes(9)
        assert (outcomes.in_flight, outcomes.unacknowledged_events) == (1, 0)
        (batch,) = await _drain(session, 1)
        (event,) = batch.events
        assert (event.event_id, event.event_time >= accepted_at + 0.1) == ("1:DELIVERED:1", True)
        assert engine.outcomes(9).in_flight == 0
        engine.close_session(session)
    finally:
        await engine.close()


async def _nothing_comes(session: stub_engine.Session) -> bool:
    """Whether the session has no batch to send for a while (ten times the flush time)."""
    try:
        async with asyncio.timeout(10 * stub_engine.FLUSH_SECONDS):
            await session.next_batch()
    except TimeoutError:
        return True
    return False


async def test_hold_feedback_keeps_events_until_released() -> None:
    engine = Engine(Timing(0.05, 0.02))
    engine.set_scenario(None, Faults(), 0, 0, hold_feedback=True)
    session = engine.open_session()
    engine.relay(_relayed(range(1, 4)))
    assert await _nothing_comes(session)
    assert engine.outcomes(9).unacknowledged_events == 3
    engine.set_scenario(None, Faults(), 0, 0, hold_feedback=False)
    (batch,) = await _drain(session, 3)
    assert [e.event_id for e in batch.events] == ["1:DELIVERED:1", "2:DELIVERED:1", "3:DELIVERED:1"]
    engine.close_session(session)


async def test_a_stream_sends_no_further_than_its_window_of_unacknowledged_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stub_engine, "WINDOW_BATCHES", 2)
    engine = Engine(Timing(0.05, 0.02))
    session = engine.open_session()
    engine.relay(_relayed(range(1, 1201)))
    first, _second = await _drain(session, 1000)
    assert await _nothing_comes(session)
    session.ack(first.seq)
    (third,) = await _drain(session, 200)
    assert [e.message_id for e in third.events] == list(range(1001, 1201))
    engine.close_session(session)


async def test_each_client_gets_the_feedback_of_what_it_relayed_only() -> None:
    engine = Engine(Timing(0.05, 0.02))
    first, second = engine.open_session("suite-a"), engine.open_session("suite-b")
    engine.relay(_relayed(range(1, 701)), "suite-a")
    engine.relay(_relayed(range(701, 1001)), "suite-b")
    # Relayed again by the other client: a duplicate, which changes nothing for either.
    assert engine.relay(_relayed(range(1, 3)), "suite-b") == (0, 2)
    a = await _drain(first, 700)
    b = await _drain(second, 300)
    assert sorted(e.message_id for batch in a for e in batch.events) == list(range(1, 701))
    assert sorted(e.message_id for batch in b for e in batch.events) == list(range(701, 1001))
    assert await _nothing_comes(first)
    assert await _nothing_comes(second)
    assert engine.outcomes(9, "suite-a").delivered == 700
    assert engine.outcomes(9, "suite-b").delivered == 300
    assert engine.outcomes(9, "suite-b").duplicates == 2
    assert engine.outcomes(9).accepted == 1000
    assert engine.outcomes(9, "nobody").accepted == 0
    engine.close_session(first)
    engine.close_session(second)


async def test_a_new_stream_of_a_client_takes_over_the_old_ones_unacknowledged_events() -> None:
    engine = Engine(Timing(0.05, 0.02))
    old = engine.open_session("service")
    engine.relay(_relayed(range(1, 601)), "service")
    sent = await _drain(old, 600)
    old.ack(sent[0].seq)
    unacknowledged = [e.event_id for batch in sent[1:] for e in batch.events]
    assert len(unacknowledged) == 100
    # The old stream is still open, as one whose client died silently is.
    new = engine.open_session("service")
    async with asyncio.timeout(1):
        (again,) = await _drain(new, 100)
    assert [e.event_id for e in again.events] == unacknowledged
    assert old.standby and not new.standby
    # The old stream gets nothing more while the new one is open; it may still relay.
    engine.relay(_relayed(range(601, 602)), "service")
    (fresh,) = await _drain(new, 1)
    assert [e.message_id for e in fresh.events] == [601]
    assert await _nothing_comes(old)
    # A late ack on the old stream changes nothing; the new stream's count.
    old.ack(sent[1].seq)
    assert engine.outcomes(9).unacknowledged_events == 101
    new.ack(again.seq)
    assert engine.outcomes(9).unacknowledged_events == 1
    # When the new stream closes, the old one is fed again, its unacknowledged batch first.
    engine.close_session(new)
    assert not old.standby
    (resent,) = await _drain(old, 1)
    assert [e.message_id for e in resent.events] == [601]
    engine.close_session(old)


async def test_two_live_streams_of_one_client_do_not_replace_each_other() -> None:
    engine = Engine(Timing(0.05, 0.02))
    first = engine.open_session("service")
    second = engine.open_session("service")
    # Both stay open: the first relays, the second gets the feedback.
    engine.relay(_relayed(range(1, 11)), "service")
    (batch,) = await _drain(second, 10)
    second.ack(batch.seq)
    assert await _nothing_comes(first)
    assert engine.outcomes(9).unacknowledged_events == 0
    engine.close_session(first)
    engine.close_session(second)


async def test_clearing_the_reorder_fault_sends_a_held_part_window_at_once() -> None:
    # A part window is held for twice the retry interval: here 20 s.
    engine = Engine(Timing(10.0, 0.02))
    engine.set_scenario(None, Faults(reorder_window=50), 0, 0)
    session = engine.open_session()
    engine.relay(_relayed(range(1, 4)))
    assert await _nothing_comes(session)
    loop = asyncio.get_running_loop()
    taking = asyncio.create_task(session.next_batch())
    await asyncio.sleep(stub_engine.FLUSH_SECONDS)
    cleared_at = loop.time()
    engine.set_scenario(None, Faults(), 0, 0)
    # Well under the hold, with room for a slow machine.
    async with asyncio.timeout(1):
        batch = await taking
    assert batch is not None and len(batch.events) == 3
    assert loop.time() - cleared_at < 1
    engine.close_session(session)


# --- scoped scenarios ---------------------------------------------------------------------


def _hard_bounced(engine: Engine, delivery_id: int) -> int:
    return engine.outcomes(delivery_id).hard_bounced


async def test_a_deliverys_scenario_decides_its_messages_and_the_global_one_the_rest() -> None:
    engine = Engine(Timing(0.05, 0.02))
    bounce_all = Mix(hard_bounce_rate=1.0)
    engine.set_scenario(bounce_all, Faults(), 0, 0, scope=scenarios.Scope(delivery_id=1))
    expire_at = time.time() + 3600
    engine.relay([Relayed(i, 1, f"u{i}@example.com", expire_at) for i in range(1, 11)], "a")
    engine.relay([Relayed(i, 2, f"u{i}@example.com", expire_at) for i in range(11, 21)], "a")
    assert (_hard_bounced(engine, 1), _hard_bounced(engine, 2)) == (10, 0)
    assert engine.outcomes(2).delivered == 10


async def test_a_scenario_applies_by_delivery_then_client_then_globally() -> None:
    engine = Engine(Timing(0.05, 0.02))
    by_delivery = scenarios.Scope(delivery_id=1)
    by_client = scenarios.Scope(client_id="suite")
    engine.set_scenario(Mix(open_rate=1.0), Faults(), 0, 0)
    engine.set_scenario(Mix(hard_bounce_rate=1.0), Faults(), 0, 0, scope=by_client)
    engine.set_scenario(None, Faults(), 7000, 0, scope=by_delivery)
    assert engine.fate_scenario(1, "suite").mix is None
    # Intervals left at 0 come from the global scenario for a scope that had none.
    assert engine.fate_scenario(1, "suite").timing == Timing(7.0, 0.02)
    assert engine.fate_scenario(2, "suite").mix == Mix(hard_bounce_rate=1.0)
    assert engine.fate_scenario(2, "other").mix == Mix(open_rate=1.0)
    assert engine.stream_scenario("suite") is engine.scenario_of(by_client)
    assert engine.stream_scenario("other") is engine.scenario
    assert engine.clear_scenario(by_delivery)
    assert not engine.clear_scenario(by_delivery)
    assert engine.fate_scenario(1, "suite").mix == Mix(hard_bounce_rate=1.0)
    assert engine.clear_scenario(by_client)
    assert engine.fate_scenario(1, "suite").mix == Mix(open_rate=1.0)
    # The global one goes back to the start-up settings.
    assert engine.clear_scenario(scenarios.GLOBAL)
    assert engine.scenario == Scenario(Timing(0.05, 0.02))


async def test_a_clients_faults_act_on_its_streams_only() -> None:
    engine = Engine(Timing(0.05, 0.02))
    engine.set_scenario(
        None, Faults(), 0, 0, hold_feedback=True, scope=scenarios.Scope(client_id="held")
    )
    held, free = engine.open_session("held"), engine.open_session("free")
    engine.relay(_relayed(range(1, 4)), "held")
    engine.relay(_relayed(range(4, 7)), "free")
    (batch,) = await _drain(free, 3)
    assert [e.message_id for e in batch.events] == [4, 5, 6]
    assert await _nothing_comes(held)
    engine.clear_scenario(scenarios.Scope(client_id="held"))
    (batch,) = await _drain(held, 3)
    assert [e.message_id for e in batch.events] == [1, 2, 3]
    engine.close_session(held)
    engine.close_session(free)


@pytest.mark.parametrize(
    ("faults", "hold", "field_name"),
    [
        (Faults(duplicate_events=True), False, "faults"),
        (Faults(reorder_window=3), False, "faults"),
        (Faults(), True, "hold_feedback"),
    ],
)
def test_a_deliverys_scenario_refuses_what_acts_on_streams(
    faults: Faults, hold: bool, field_name: str
) -> None:
    scope = scenarios.Scope(delivery_id=4)
    with pytest.raises(ScenarioError, match=rf"^{field_name}: .* acts? on streams"):
        scenarios.update_scenario(BASE, None, faults, 0, 0, hold, scope)


@pytest.mark.parametrize(
    ("delivery_id", "client_id", "message"),
    [
        (-1, "", "delivery_id: must not be negative"),
        (3, "suite", "client_id: give delivery_id or client_id, not both"),
        (0, "x" * 201, "client_id: must be at most 200 characters"),
    ],
)
def test_a_bad_scope_names_its_field(delivery_id: int, client_id: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=f"^{re.escape(message)}$"):
        scenarios.checked_scope(delivery_id, client_id)


def test_a_good_scope_is_taken_as_given() -> None:
    assert scenarios.checked_scope(0, "") == scenarios.GLOBAL
    assert scenarios.checked_scope(5, "") == scenarios.Scope(delivery_id=5)
    longest = "x" * scenarios.MAX_CLIENT_ID
    assert scenarios.checked_scope(0, longest) == scenarios.Scope(client_id=longest)


def test_scopes_round_trip_through_their_keys() -> None:
    for scope in (
        scenarios.GLOBAL,
        scenarios.Scope(delivery_id=12),
        scenarios.Scope(client_id="a:b"),
    ):
        assert scenarios.Scope.from_key(scope.key) == scope
    assert str(scenarios.Scope(client_id="a")) == "client:a"
    assert str(scenarios.GLOBAL) == "global"


def test_scoped_scenarios_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stub_engine, "MAX_SCOPED_SCENARIOS", 2)
    engine = Engine(Timing(0.05, 0.02))
    for delivery_id in (1, 2):
        engine.set_scenario(None, Faults(), 0, 0, scope=scenarios.Scope(delivery_id=delivery_id))
    with pytest.raises(stub_engine.ScenarioLimitError, match="ClearScenario"):
        engine.set_scenario(None, Faults(), 0, 0, scope=scenarios.Scope(delivery_id=3))
    # Replacing one is not a new one, and the global one is not counted.
    engine.set_scenario(Mix(seed=1), Faults(), 0, 0, scope=scenarios.Scope(delivery_id=2))
    engine.set_scenario(Mix(seed=1), Faults(), 0, 0)
