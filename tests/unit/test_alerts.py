"""SPEC.md's delivery alerts ("Failure breakdown and alerts") on the domain rules alone:
the ratios alert strictly above their thresholds and low throughput strictly below its
rate, the waits from the configured seconds on; deliveries under the minimum number of
messages are not checked; a hard-bounce ratio over the configured limit stops the rest
of the delivery."""

from __future__ import annotations

import dataclasses

from delivery.v1 import delivery_service_pb2 as pb

from delivery_service.domain.alerts import (
    Alert,
    AlertRules,
    Criterion,
    Facts,
    evaluate,
    ratio,
    stops,
)

RULES = AlertRules()
HARD = Criterion.HARD_BOUNCE_RATIO
SOFT = Criterion.SOFT_BOUNCE_RATIO
NOTHING_RELAYED = Criterion.NOTHING_RELAYED
LOW_THROUGHPUT = Criterion.LOW_THROUGHPUT
COMPLAINTS = Criterion.COMPLAINT_RATIO

# A delivery that crosses nothing: half of its 1,000 messages relayed in the 5 minutes
# since its confirmation (within the throughput window), no failures, no complaints.
CALM = Facts(
    to_deliver=1000,
    sent=500,
    delivered=400,
    hard_failed=0,
    soft_failed=0,
    complaints=0,
    seconds_since_confirm=300.0,
    sending=True,
)


def facts(**changes: object) -> Facts:
    return dataclasses.replace(CALM, **changes)  # type: ignore[arg-type]


def criteria(f: Facts, rules: AlertRules = RULES) -> list[Criterion]:
    return [alert.criterion for alert in evaluate(f, rules)]


# Every criterion crossed at once, by a delivery of `to_deliver` messages.
def crossing_everything(to_deliver: int) -> Facts:
    return Facts(
        to_deliver=to_deliver,
        sent=10,
        delivered=5,
        hard_failed=5,
        soft_failed=5,
        complaints=5,
        seconds_since_confirm=3600.0,
        sending=True,
    )


def test_default_rules_are_the_specs_thresholds() -> None:
    # At least 100 messages; hard and soft bounces over 5 %, complaints over 0.1 %;
    # nothing relayed 15 minutes after the confirmation; under 1,000 messages an hour
    # after 10 minutes of sending; no stop unless a limit is configured.
    assert dataclasses.astuple(RULES) == (100, 0.05, 0.05, 0.001, 900.0, 1000.0, 600.0, None)


def test_criteria_carry_the_values_of_the_api() -> None:
    assert [(c.name, c.value) for c in Criterion] == [
        ("HARD_BOUNCE_RATIO", pb.ALERT_CRITERION_HARD_BOUNCE_RATIO),
        ("SOFT_BOUNCE_RATIO", pb.ALERT_CRITERION_SOFT_BOUNCE_RATIO),
        ("NOTHING_RELAYED", pb.ALERT_CRITERION_NOTHING_RELAYED),
        ("LOW_THROUGHPUT", pb.ALERT_CRITERION_LOW_THROUGHPUT),
        ("COMPLAINT_RATIO", pb.ALERT_CRITERION_COMPLAINT_RATIO),
    ]


def test_a_calm_delivery_raises_nothing() -> None:
    assert evaluate(CALM, RULES) == []


def test_a_delivery_with_the_minimum_number_of_messages_is_checked() -> None:
    assert criteria(crossing_everything(100)) == [HARD, SOFT, COMPLAINTS, LOW_THROUGHPUT]
    rules = AlertRules(min_messages=20)
    assert criteria(crossing_everything(20), rules) == [HARD, SOFT, COMPLAINTS, LOW_THROUGHPUT]


def test_a_delivery_under_the_minimum_number_of_messages_raises_nothing() -> None:
    assert evaluate(crossing_everything(99), RULES) == []
    assert evaluate(crossing_everything(19), AlertRules(min_messages=20)) == []
    # Not even when nothing was relayed for hours.
    idle = facts(to_deliver=99, sent=0, delivered=0, seconds_since_confirm=36_000.0)
    assert evaluate(idle, RULES) == []


def test_hard_bounce_ratio_at_the_threshold_raises_nothing() -> None:
    assert evaluate(facts(sent=100, hard_failed=5), RULES) == []
    assert evaluate(facts(sent=100, hard_failed=20), AlertRules(hard_bounce_ratio=0.2)) == []


def test_hard_bounce_ratio_over_the_threshold_alerts_with_ratio_threshold_and_message() -> None:
    assert evaluate(facts(sent=1000, hard_failed=51), RULES) == [
        Alert(HARD, 0.051, 0.05, "5.1% of the messages sent hard-bounced")
    ]
    assert evaluate(facts(sent=100, hard_failed=21), AlertRules(hard_bounce_ratio=0.2)) == [
        Alert(HARD, 0.21, 0.2, "21.0% of the messages sent hard-bounced")
    ]


def test_hard_bounce_ratio_is_over_the_messages_sent() -> None:
    # 30 of 500 sent is 6 %, though only 3 % of the 1,000 to deliver and of 1,000 delivered.
    f = facts(to_deliver=1000, sent=500, delivered=1000, hard_failed=30)
    assert evaluate(f, RULES) == [Alert(HARD, 0.06, 0.05, "6.0% of the messages sent hard-bounced")]


def test_soft_bounce_ratio_at_the_threshold_raises_nothing() -> None:
    assert evaluate(facts(sent=100, soft_failed=5), RULES) == []
    assert evaluate(facts(sent=100, soft_failed=20), AlertRules(soft_bounce_ratio=0.2)) == []


def test_soft_bounce_ratio_over_the_threshold_alerts_with_ratio_threshold_and_message() -> None:
    assert evaluate(facts(sent=1000, soft_failed=51), RULES) == [
        Alert(SOFT, 0.051, 0.05, "5.1% of the messages sent failed soft")
    ]
    assert evaluate(facts(sent=100, soft_failed=21), AlertRules(soft_bounce_ratio=0.2)) == [
        Alert(SOFT, 0.21, 0.2, "21.0% of the messages sent failed soft")
    ]


def test_soft_bounce_ratio_is_over_the_messages_sent() -> None:
    f = facts(to_deliver=1000, sent=500, delivered=1000, soft_failed=30)
    assert evaluate(f, RULES) == [Alert(SOFT, 0.06, 0.05, "6.0% of the messages sent failed soft")]


def test_complaint_ratio_at_the_threshold_raises_nothing() -> None:
    assert evaluate(facts(delivered=1000, complaints=1), RULES) == []
    assert evaluate(facts(delivered=100, complaints=2), AlertRules(complaint_ratio=0.02)) == []


def test_complaint_ratio_over_the_threshold_alerts_with_ratio_threshold_and_message() -> None:
    assert evaluate(facts(delivered=1000, complaints=2), RULES) == [
        Alert(COMPLAINTS, 0.002, 0.001, "0.20% of the messages delivered drew a complaint")
    ]
    rules = AlertRules(complaint_ratio=0.02)
    assert evaluate(facts(delivered=100, complaints=3), rules) == [
        Alert(COMPLAINTS, 0.03, 0.02, "3.00% of the messages delivered drew a complaint")
    ]


def test_complaint_ratio_is_over_the_messages_delivered() -> None:
    # 2 of 400 delivered is 0.5 %, though only 0.2 % of the 1,000 sent.
    f = facts(to_deliver=1000, sent=1000, delivered=400, complaints=2, sending=False)
    assert evaluate(f, RULES) == [
        Alert(COMPLAINTS, 0.005, 0.001, "0.50% of the messages delivered drew a complaint")
    ]


def test_ratio_of_a_zero_denominator_is_zero() -> None:
    assert ratio(3, 4) == 0.75
    assert ratio(0, 4) == 0.0
    assert ratio(3, 0) == 0.0


def test_ratios_over_nothing_sent_or_delivered_raise_nothing() -> None:
    # Counters read mid-update may show failures or complaints before the messages sent
    # or delivered: a zero denominator is a ratio of 0, not an alert nor an error.
    f = facts(sent=0, delivered=0, hard_failed=1, soft_failed=1, complaints=1, sending=False)
    assert evaluate(f, RULES) == []


def test_nothing_relayed_alerts_at_exactly_the_configured_seconds() -> None:
    f = facts(sent=0, delivered=0, seconds_since_confirm=900.0)
    assert evaluate(f, RULES) == [
        Alert(NOTHING_RELAYED, 900.0, 900.0, "nothing relayed 900 s after the send was confirmed")
    ]


def test_nothing_relayed_alerts_with_the_seconds_since_confirm_and_message() -> None:
    f = facts(sent=0, delivered=0, seconds_since_confirm=1234.4)
    rules = AlertRules(nothing_relayed_seconds=60.0)
    assert evaluate(f, rules) == [
        Alert(NOTHING_RELAYED, 1234.4, 60.0, "nothing relayed 1234 s after the send was confirmed")
    ]


def test_nothing_relayed_before_the_configured_seconds_raises_nothing() -> None:
    assert evaluate(facts(sent=0, delivered=0, seconds_since_confirm=899.9), RULES) == []
    rules = AlertRules(nothing_relayed_seconds=60.0)
    assert evaluate(facts(sent=0, delivered=0, seconds_since_confirm=59.0), rules) == []


def test_nothing_relayed_only_while_sending() -> None:
    f = facts(sent=0, delivered=0, seconds_since_confirm=3600.0, sending=False)
    assert evaluate(f, RULES) == []


def test_nothing_relayed_only_with_nothing_sent() -> None:
    # One message relayed in an hour is low throughput, but something was relayed.
    f = facts(sent=1, delivered=0, seconds_since_confirm=3600.0)
    assert criteria(f) == [LOW_THROUGHPUT]


def test_low_throughput_alerts_with_messages_per_hour_since_confirm_and_message() -> None:
    # 150 messages in 15 minutes: 600 an hour.
    f = facts(sent=150, seconds_since_confirm=900.0)
    assert evaluate(f, RULES) == [
        Alert(LOW_THROUGHPUT, 600.0, 1000.0, "600 messages relayed per hour")
    ]
    # 7 messages in 2 hours: 3.5 an hour.
    rules = AlertRules(min_messages_per_hour=10.0)
    assert evaluate(facts(sent=7, seconds_since_confirm=7200.0), rules) == [
        Alert(LOW_THROUGHPUT, 3.5, 10.0, "4 messages relayed per hour")
    ]


def test_low_throughput_at_exactly_the_rate_raises_nothing() -> None:
    # 200 messages in 12 minutes: 1,000 an hour.
    assert evaluate(facts(sent=200, seconds_since_confirm=720.0), RULES) == []
    rules = AlertRules(min_messages_per_hour=10.0)
    assert evaluate(facts(sent=20, seconds_since_confirm=7200.0), rules) == []


def test_low_throughput_alerts_from_the_end_of_the_window() -> None:
    assert evaluate(facts(sent=1, seconds_since_confirm=600.0), RULES) == [
        Alert(LOW_THROUGHPUT, 6.0, 1000.0, "6 messages relayed per hour")
    ]
    rules = AlertRules(throughput_window_seconds=1800.0)
    assert criteria(facts(sent=1, seconds_since_confirm=1800.0), rules) == [LOW_THROUGHPUT]


def test_low_throughput_within_the_window_raises_nothing() -> None:
    assert evaluate(facts(sent=1, seconds_since_confirm=599.9), RULES) == []
    rules = AlertRules(throughput_window_seconds=1800.0)
    assert evaluate(facts(sent=1, seconds_since_confirm=1799.0), rules) == []


def test_low_throughput_only_while_sending() -> None:
    assert evaluate(facts(sent=1, seconds_since_confirm=3600.0, sending=False), RULES) == []


def test_low_throughput_only_with_some_but_not_all_sent() -> None:
    slow = {"to_deliver": 100, "delivered": 0, "seconds_since_confirm": 720.0}
    # 99 messages in 12 minutes: 495 an hour, with one left to relay.
    assert criteria(facts(sent=99, **slow)) == [LOW_THROUGHPUT]
    # All sent (a SENDING delivery whose last message was just relayed): nothing remains.
    assert evaluate(facts(sent=100, **slow), RULES) == []
    # None sent: that is "nothing relayed" once its time has come, not low throughput.
    assert evaluate(facts(sent=0, **slow), RULES) == []


def test_low_throughput_with_no_time_since_confirm_is_a_rate_of_zero() -> None:
    # With no window, a delivery confirmed this instant: no division by zero.
    rules = AlertRules(throughput_window_seconds=0.0)
    assert evaluate(facts(sent=1, seconds_since_confirm=0.0), rules) == [
        Alert(LOW_THROUGHPUT, 0.0, 1000.0, "0 messages relayed per hour")
    ]
    # Within the first second the rate is already measured: 1 message in 1 s is 3,600/h.
    assert evaluate(facts(sent=1, seconds_since_confirm=1.0), rules) == []
    assert evaluate(facts(sent=1, seconds_since_confirm=0.5), rules) == []


def test_several_criteria_crossed_at_once_are_all_raised() -> None:
    f = facts(
        sent=100, delivered=50, hard_failed=10, soft_failed=10, complaints=1,
        seconds_since_confirm=3600.0,
    )  # fmt: skip
    assert evaluate(f, RULES) == [
        Alert(HARD, 0.1, 0.05, "10.0% of the messages sent hard-bounced"),
        Alert(SOFT, 0.1, 0.05, "10.0% of the messages sent failed soft"),
        Alert(COMPLAINTS, 0.02, 0.001, "2.00% of the messages delivered drew a complaint"),
        Alert(LOW_THROUGHPUT, 100.0, 1000.0, "100 messages relayed per hour"),
    ]


STOP = AlertRules(stop_hard_bounce_ratio=0.1)
# 11 of 100 sent hard-bounced: over the limit of 10 %.
OVER_THE_LIMIT = facts(sent=100, hard_failed=11)


def test_stops_over_the_configured_limit() -> None:
    assert stops(OVER_THE_LIMIT, STOP)
    assert stops(facts(sent=100, hard_failed=1), AlertRules(stop_hard_bounce_ratio=0.0))


def test_stops_never_without_a_configured_limit() -> None:
    assert not stops(facts(sent=100, hard_failed=100), RULES)


def test_stops_not_at_the_limit() -> None:
    assert not stops(facts(sent=100, hard_failed=10), STOP)
    assert not stops(facts(sent=100, hard_failed=0), AlertRules(stop_hard_bounce_ratio=0.0))


def test_stops_only_while_sending() -> None:
    assert not stops(dataclasses.replace(OVER_THE_LIMIT, sending=False), STOP)


def test_stops_only_with_the_minimum_number_of_messages() -> None:
    assert stops(dataclasses.replace(OVER_THE_LIMIT, to_deliver=100), STOP)
    assert not stops(dataclasses.replace(OVER_THE_LIMIT, to_deliver=99), STOP)
    rules = AlertRules(min_messages=500, stop_hard_bounce_ratio=0.1)
    assert stops(dataclasses.replace(OVER_THE_LIMIT, to_deliver=500), rules)
    assert not stops(dataclasses.replace(OVER_THE_LIMIT, to_deliver=499), rules)


def test_stops_on_the_ratio_over_the_messages_sent() -> None:
    # 11 hard bounces are 1.1 % of the 1,000 to deliver but 11 % of the 100 sent.
    assert stops(facts(to_deliver=1000, sent=100, delivered=1000, hard_failed=11), STOP)
    # Nothing sent: a ratio of 0, under any limit.
    assert not stops(facts(sent=0, hard_failed=1), STOP)
