"""The stub's seeded mix of fates, the one home of the figures that the demo, the benchmark
and the tests send in `SetScenario(mix=...)`.

A caller that needs other figures says which with `variant(...)`, at its call site, with
its reason beside it: what differs from the seeded mix stays in plain sight.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from mta.v1 import mta_service_pb2 as mta

# A few of every fate, so that every KPI moves within a short validity: hard bounces,
# soft bounces retried into delivery (1 to 3 retries), soft bounces until the validity
# ends, and engagement (the open rate is of delivered messages, the click rate of opened
# ones). A shared message: use it in requests (they copy it) or through variant(), never
# change it in place.
SEEDED_MIX = mta.Mix(
    seed=42,
    hard_bounce_rate=0.03,
    soft_then_delivered_rate=0.06,
    soft_until_expiry_rate=0.02,
    open_rate=0.4,
    click_rate=0.3,
    max_retries=3,
)

# The seeded mix's complaints and late hard bounces, as fractions of the delivered messages:
# 0.1 % complain (Adobe's complaint alert threshold) and 0.2 % bounce up to 300 ms after
# their delivery report. mta.v1.Mix has no fields for them, so they are the stub's own
# settings (--mix-extras, which every mix SetScenario sets then gets): start a stub with
# stub_args() for them. A shared dict: never change it in place.
SEEDED_MIX_EXTRAS: Mapping[str, float] = {
    "complaint_rate": 0.001,
    "late_hard_bounce_rate": 0.002,
    "late_hard_bounce_max_ms": 300,
}


def stub_args(extras: Mapping[str, float] = SEEDED_MIX_EXTRAS) -> tuple[str, str]:
    """The stub's flags that give every mix it is given these extras (those of the seeded
    mix by default): ("--mix-extras", "<the JSON object>")."""
    return ("--mix-extras", json.dumps(dict(extras), sort_keys=True))


def variant(**changes: float) -> mta.Mix:
    """A copy of SEEDED_MIX with the fields named in `changes` set to other values.

    An unknown field name raises AttributeError; values go through the proto's own type
    checks (an int field refuses a float).
    """
    mix = mta.Mix()
    mix.CopyFrom(SEEDED_MIX)
    for name, value in changes.items():
        setattr(mix, name, value)
    return mix
