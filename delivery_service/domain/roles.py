"""The roles an operator can hold. Which RPC needs which is delivery_service.authorization."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    # GetDelivery, ListDeliveries, WatchDeployment, GetKpis, ListSendingLogs and
    # GetRecurringDelivery: they reveal recipients' addresses.
    READ_DELIVERIES = "read_deliveries"
    # UpsertProfiles, GetProfileHistory.
    MANAGE_PROFILES = "manage_profiles"
    # CreateDelivery, PrepareDelivery, a recurring delivery that waits for confirmation.
    CREATE_DELIVERIES = "create_deliveries"
    APPROVE_DELIVERIES = "approve_deliveries"
    # ConfirmSend, StopDelivery, the recurring deliveries' controls, and creating one that
    # sends unattended (which confirms every occurrence in advance).
    START_DELIVERIES = "start_deliveries"
    COMPUTE_STATS = "compute_stats"
    # Operators and the audit trail.
    ADMIN = "admin"
