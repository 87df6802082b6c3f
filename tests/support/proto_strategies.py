"""Hypothesis strategies for any protobuf message, built from its descriptor.

Each field is left unset or given a value that is often wrong: random and huge
strings, unicode, out-of-range numbers, unknown enum values, oversized lists,
nested messages with the same treatment.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
_INT64_TYPES = (
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
)

# Values that tend to find edges: empty, whitespace, NUL, very long, odd unicode.
_SPECIAL_TEXT = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "x" * 5000, "ü" * 300, "\u202e", "a@b", "@", "user@example.com"]
)
_TEXT = st.one_of(_SPECIAL_TEXT, st.text(max_size=300))
_BIG_TEXT = st.integers(min_value=1 << 16, max_value=(1 << 21)).map(lambda n: "y" * n)


def _scalar(field: Any, big_text: bool) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        big = big_text and field.name in ("body", "label")
        return st.one_of(_TEXT, _BIG_TEXT) if big else _TEXT
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=100)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(*INT32))
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return st.one_of(st.integers(-3, 1_000_001), st.integers(*INT64))
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    return st.one_of(st.integers(-3, 1000), st.integers(*INT32))


def _fill(descriptor: Any, depth: int, oversized: bool) -> st.SearchStrategy[dict[str, Any]]:
    # Big strings and oversized lists only where they cannot multiply each other.
    big_text = oversized
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None:
            if depth <= 0 or field.message_type.GetOptions().map_entry:
                continue
            # Only one level may hold an oversized list: nested ones would multiply.
            inner = _fill(field.message_type, depth - 1, oversized and not field.is_repeated)
            value: st.SearchStrategy[Any] = inner
        else:
            value = _scalar(field, big_text)
        if field.is_repeated and not oversized:
            value = st.lists(value, max_size=5)
        elif field.is_repeated:
            value = st.one_of(
                st.lists(value, max_size=5),
                # Oversized lists: the same item many times is enough to pass a limit.
                st.tuples(value, st.just(10_001)).map(lambda p: [p[0]] * p[1]),
            )
        parts[field.name] = st.none() | value
    return st.fixed_dictionaries(parts)


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    _apply(message, values)
    return message


def _apply(message: Message, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if value is None:
            continue
        field = message.DESCRIPTOR.fields_by_name[name]
        try:
            if field.message_type is not None:
                if field.is_repeated:
                    container = getattr(message, name)
                    for item in value:
                        _apply(container.add(), item)
                else:
                    _apply(getattr(message, name), value)
                    getattr(message, name).SetInParent()
            elif field.is_repeated:
                getattr(message, name).extend(value)
            else:
                setattr(message, name, value)
        except (ValueError, TypeError):
            # A value the field cannot hold (say, a well-known type's range): leave it unset.
            continue


def messages(cls: type[Message], depth: int = 3) -> st.SearchStrategy[Message]:
    """Messages of this class with garbage in any field."""
    return _fill(cls.DESCRIPTOR, depth, oversized=True).map(lambda values: _build(cls, values))
