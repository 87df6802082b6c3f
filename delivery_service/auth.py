"""Operators: tokens (stored hashed) and roles."""

from __future__ import annotations

import hashlib
import secrets

from delivery_service.domain.lifecycle import Role
from delivery_service.store import operators
from delivery_service.store.connection import Database

TOKEN_BYTES = 32


class Unauthenticated(Exception):
    """No token, or a token no operator holds."""


class PermissionDenied(Exception):
    """The operator lacks the role the call needs."""


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


async def require(db: Database, token: str | None, role: Role) -> str:
    """The name of the operator holding the token, if it has the role."""
    if token is None:
        raise Unauthenticated("an operator token is required: authorization: Bearer <token>")
    async with db.connection() as conn:
        operator = await operators.find(conn, token_hash(token))
    if operator is None:
        raise Unauthenticated("the token is not an operator's")
    if str(role) not in operator.roles:
        raise PermissionDenied(f"operator {operator.name!r} lacks the role {role}")
    return operator.name
