"""The named SQL files' loader (grpc_common.named_queries): queries by name, comments and
final semicolons dropped, and the parts queries share put in place."""

from __future__ import annotations

import pytest

from grpc_common import named_queries

SQL = """-- A file's heading.

-- part: columns
-- What two queries read.
a, b -- inline comments stay
-- name: first
-- The first.
SELECT {part:columns} FROM t;

-- name: second
-- The second.
SELECT {part:columns}, c
FROM t
WHERE c > 0;
"""


def test_queries_by_name_with_their_parts_in_place() -> None:
    assert named_queries.parse(SQL) == {
        "first": "SELECT a, b -- inline comments stay\n FROM t",
        "second": "SELECT a, b -- inline comments stay\n, c\nFROM t\nWHERE c > 0",
    }


def test_a_part_no_file_defines_is_an_error() -> None:
    with pytest.raises(KeyError):
        named_queries.parse("-- name: q\nSELECT {part:missing}")
