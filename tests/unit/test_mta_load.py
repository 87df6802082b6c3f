"""The load command's handling of what comes after delivery reports, without a stub."""

from __future__ import annotations

import argparse

import pytest
from mta.v1 import mta_service_pb2 as mta

from mta_stub import load


def test_a_json_mix_is_an_mta_v1_mix() -> None:
    assert load.parse_mix('{"seed": 3, "hard_bounce_rate": 0.1}') == mta.Mix(
        seed=3, hard_bounce_rate=0.1
    )


@pytest.mark.parametrize(
    "name", ["complaint_rate", "late_hard_bounce_rate", "late_hard_bounce_max_ms"]
)
def test_the_stubs_own_mix_fields_say_where_they_go(name: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{name} is no field of mta.v1.Mix: "):
        load.parse_mix(f'{{"seed": 3, "{name}": 0.1}}')
    with pytest.raises(argparse.ArgumentTypeError, match="--mix-extras"):
        load.parse_mix(f'{{"{name}": 1}}')


def test_other_bad_mixes_list_the_named_ones() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="one of seeded, "):
        load.parse_mix('{"opens": 1}')


def event(message_id: int, kind: mta.EventKind.ValueType) -> mta.FeedbackEvent:
    return mta.FeedbackEvent(event_id=f"{message_id}:{kind}", message_id=message_id, kind=kind)


def test_what_came_after_delivery_reports_is_counted() -> None:
    feedback = load._Feedback(first_id=1, batch=10, count=3)
    feedback.sent_at.append(0.0)
    first = mta.FeedbackBatch(
        seq=1,
        events=[
            event(1, mta.EVENT_KIND_DELIVERED),
            event(2, mta.EVENT_KIND_HARD_BOUNCE),
            event(3, mta.EVENT_KIND_DELIVERED),
        ],
    )
    later = mta.FeedbackBatch(
        seq=2,
        events=[
            event(1, mta.EVENT_KIND_COMPLAINT),
            event(3, mta.EVENT_KIND_HARD_BOUNCE),
            event(3, mta.EVENT_KIND_IGNORED),
            event(1, mta.EVENT_KIND_OPENED),
        ],
    )
    feedback.on_batch(first, 0.0)
    feedback.on_batch(later, 0.0)
    assert feedback.after_delivery == {"COMPLAINT": 1, "LATE_HARD_BOUNCE": 1, "IGNORED": 1}
    # The first final event of each message is its fate.
    assert feedback.fates == {
        1: mta.EVENT_KIND_DELIVERED,
        2: mta.EVENT_KIND_HARD_BOUNCE,
        3: mta.EVENT_KIND_DELIVERED,
    }


def test_the_report_shows_them_when_there_are_some() -> None:
    report = load.Report("stub", 10, 0.0, after_delivery={"COMPLAINT": 2})
    assert "after delivery   COMPLAINT 2" in load.render(report).splitlines()
    assert "after delivery" not in load.render(load.Report("stub", 10, 0.0))
