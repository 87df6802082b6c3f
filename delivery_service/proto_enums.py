"""The domain's enums and the protos' enums, paired by name: each fact has one home (the
domain), and a value that drifts from the proto fails at import, not in production.

`X_PB` maps a domain member to its proto value; `X_OF` maps a proto value back.
(Values are typed Any: each proto enum has a type of its own in the generated stubs.)
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import delivery_service_pb2 as pb
from mta.v1 import mta_service_pb2 as mta

from delivery_service.domain import events as ev
from delivery_service.domain import feedback as fb
from delivery_service.domain import lifecycle
from delivery_service.domain import quarantine as q
from delivery_service.domain.preparation import DropReason
from delivery_service.domain.recurring import RecurringState

E = TypeVar("E", bound=enum.Enum)


def paired(domain: type[E], proto: Any, prefix: str, *, same_numbers: bool) -> dict[E, Any]:
    """Each member of `domain` and the proto value named prefix + its name. With
    same_numbers, the domain's values must be the proto's numbers (they are stored)."""
    pairs: dict[E, Any] = {}
    for member in domain:
        if same_numbers and member.value == 0:
            pairs[member] = 0  # the domain's "none" is the proto's UNSPECIFIED
            continue
        value = proto.Value(prefix + member.name)
        if same_numbers and value != member.value:
            raise ValueError(f"{domain.__name__}.{member.name} is {member.value}, proto {value}")
        pairs[member] = value
    return pairs


STATE_PB = paired(lifecycle.State, pb.State, "STATE_", same_numbers=False)
MODE_PB = paired(fb.FeedbackMode, pb.FeedbackMode, "FEEDBACK_MODE_", same_numbers=False)
STEP_PB = paired(lifecycle.ApprovalStep, pb.ApprovalStep, "APPROVAL_STEP_", same_numbers=False)
RECURRING_STATE_PB = paired(
    RecurringState, pb.RecurringState, "RECURRING_STATE_", same_numbers=False
)
DROP_REASON_PB = paired(DropReason, pb.DropReason, "DROP_REASON_", same_numbers=False)
STATUS_PB = paired(fb.Status, pb.SendingStatus, "SENDING_STATUS_", same_numbers=True)
FAILURE_TYPE_PB = paired(fb.FailureType, pb.FailureType, "FAILURE_TYPE_", same_numbers=True)
FAILURE_REASON_PB = paired(fb.FailureReason, pb.FailureReason, "FAILURE_REASON_", same_numbers=True)
FEED_KIND_PB = paired(ev.EventKind, pb.DeliveryEventKind, "DELIVERY_EVENT_KIND_", same_numbers=True)
ADDRESS_STATUS_PB = paired(
    q.AddressStatus, adpb.AddressStatus, "ADDRESS_STATUS_", same_numbers=True
)
# Paired at import though no code looks it up: a drifted number then stops the service.
EVENT_KIND_MTA = paired(fb.EventKind, mta.EventKind, "EVENT_KIND_", same_numbers=True)
# The MTA's bounce reasons are the failure reasons it can report, same numbers.
BOUNCE_REASON_MTA = {
    reason: mta.BounceReason.Value("BOUNCE_REASON_" + reason.name)
    for reason in fb.FailureReason
    if reason in fb.MTA_BOUNCE_REASONS
}
assert all(BOUNCE_REASON_MTA[r] == r.value for r in BOUNCE_REASON_MTA)


def inverse(pairs: dict[E, Any]) -> dict[int, E]:
    return {value: member for member, value in pairs.items()}


STATE_OF = inverse(STATE_PB)
MODE_OF = inverse(MODE_PB)
STEP_OF = inverse(STEP_PB)
STATUS_OF = inverse(STATUS_PB)
FAILURE_REASON_OF = inverse(FAILURE_REASON_PB)
ADDRESS_STATUS_OF = inverse(ADDRESS_STATUS_PB)
FEED_KIND_OF = inverse(FEED_KIND_PB)
