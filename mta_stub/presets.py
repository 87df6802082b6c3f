"""The stub's seeded mix of fates, the one home of the figures that the demo, the benchmark
and the tests send in `SetScenario(mix=...)`.

A caller that needs other figures says which with `variant(...)`, at its call site, with
its reason beside it: what differs from the seeded mix stays in plain sight.
"""

from __future__ import annotations

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
