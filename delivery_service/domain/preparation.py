"""Preparation's analysis: why a recipient gets no message."""

from __future__ import annotations

import enum


class DropReason(enum.StrEnum):
    """The values are delivery.v1.DropReason's names, without the prefix."""

    DUPLICATE = "DUPLICATE"
    INVALID_ADDRESS = "INVALID_ADDRESS"
    QUARANTINED = "QUARANTINED"
    UNKNOWN_PROFILE = "UNKNOWN_PROFILE"
    NO_ADDRESS = "NO_ADDRESS"
    DENYLISTED = "DENYLISTED"
