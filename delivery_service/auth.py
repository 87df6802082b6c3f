"""Operators: tokens (stored hashed) and roles."""

from __future__ import annotations

import hashlib
import secrets
import time

from delivery_service.domain.roles import Role
from delivery_service.store import operators
from delivery_service.store.connection import Database
from delivery_service.store.records import Operator

TOKEN_BYTES = 32


class Unauthenticated(Exception):
    """No token, or a token no operator holds."""


class PermissionDenied(Exception):
    """The operator lacks the role the call needs."""

    def __init__(self, message: str, operator: str = "") -> None:
        super().__init__(message)
        self.operator = operator


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    # Tokens carry 256 random bits: a fast hash is enough, nothing to brute-force.
    return hashlib.sha256(token.encode()).digest()


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


# How long a looked-up operator is believed without asking the database again: every
# RPC checks its caller, and this keeps that off the database's back. A revoked or
# changed operator takes effect within it.
OPERATOR_TTL_SECONDS = 2.0
_known: dict[bytes, tuple[Operator, float]] = {}


async def require(db: Database, token: str | None, role: Role) -> Operator:
    """The operator holding the token, if it has the role."""
    if token is None:
        raise Unauthenticated("an operator token is required: authorization: Bearer <token>")
    key = token_hash(token)
    now = time.monotonic()
    known = _known.get(key)
    if known is None or known[1] <= now:
        async with db.connection() as conn:
            found = await operators.find(conn, key)
        if found is None:
            _known.pop(key, None)
            raise Unauthenticated("the token is not an operator's")
        known = _known[key] = (found, now + OPERATOR_TTL_SECONDS)
    check(known[0], role)
    return known[0]


def check(operator: Operator, role: Role) -> None:
    """Raises PermissionDenied unless the operator has the role too."""
    if str(role) not in operator.roles:
        raise PermissionDenied(f"operator {operator.name!r} lacks the role {role}", operator.name)
