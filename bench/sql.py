"""The benchmark's queries, loaded once by name from queries.sql (the service's own layout)."""

from __future__ import annotations

from grpc_common import named_queries

QUERIES = named_queries.load("bench", "queries.sql")


def q(name: str) -> bytes:
    """A query by name, as bytes: psycopg then takes it as is (no literal-string typing)."""
    return QUERIES[name].encode()
