"""The array literals the store sends instead of lists (store.connection): PostgreSQL
reads each back as the list it was made from, whatever the text holds."""

from __future__ import annotations

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from delivery_service.store.connection import text_array

# Any text PostgreSQL can hold: no NUL.
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))


@settings(derandomize=True, max_examples=300, deadline=None)
@given(values=st.lists(TEXT, max_size=20))
def test_a_text_array_literal_reads_back_as_its_list(module_db_url: str, values: list[str]) -> None:
    with psycopg.connect(module_db_url, autocommit=True) as conn:
        row = conn.execute("SELECT %s::text[]", (text_array(values),)).fetchone()
    assert row is not None and row[0] == values


@given(values=st.lists(st.text(), min_size=1, max_size=20))
def test_a_nul_in_a_value_falls_back_to_quoting_each(values: list[str]) -> None:
    with_nul = [*values, "a\x00b"]
    quoted = ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in with_nul)
    assert text_array(with_nul) == "{" + quoted + "}"
