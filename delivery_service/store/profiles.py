"""Profiles, created or replaced by callers."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict

from delivery_service.domain.requests import ProfileUpdate
from delivery_service.store.connection import Conn, fetch_tuples, fetch_value


async def upsert(conn: Conn, profiles: list[ProfileUpdate], now: dt.datetime) -> tuple[int, int]:
    """Creates or replaces profiles; returns how many were created and how many updated."""
    rows = await fetch_tuples(
        conn, "upsert_profiles", profiles=json.dumps([asdict(p) for p in profiles]), now=now
    )
    created = sum(1 for (was_created,) in rows if was_created)
    return created, len(rows) - created


async def exists(conn: Conn, profile_id: str) -> bool:
    return await fetch_value(conn, "profile_exists", profile_id=profile_id) is not None
