"""Email address rules: what a request may carry, and what preparation keeps."""

from __future__ import annotations

import re

MAX_ADDRESS_LENGTH = 254

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
# Two patterns for Python and for PostgreSQL (preparation runs them in SQL over whole
# targets): only syntax both regex dialects read the same way. An address matches the
# first, and its domain (after the @) not the second: no label longer than 63. Apart,
# not as {0,61} in the first: PostgreSQL's automaton for bounded repeats inside a
# repeated group took 4.3 s over 1,000,000 addresses, these two 0.7 s.
ADDRESS_PATTERN = rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[A-Za-z]{{2,}}$"
LONG_LABEL_PATTERN = r"[A-Za-z0-9-]{64}"
_ADDRESS = re.compile(ADDRESS_PATTERN)
_LONG_LABEL = re.compile(LONG_LABEL_PATTERN)


def is_deliverable(address: str) -> bool:
    """Whether preparation keeps the address (otherwise: dropped as invalid)."""
    return (
        len(address) <= MAX_ADDRESS_LENGTH
        and _ADDRESS.match(address) is not None
        and _LONG_LABEL.search(address.rpartition("@")[2]) is None
    )


def malformation(address: str) -> str | None:
    """Why an address cannot even be accepted in a request, or None.

    Requests refuse what is not an address at all; an address that is only
    undeliverable is accepted and dropped, with its reason, at preparation.
    """
    if not address:
        return "must not be empty"
    if len(address) > MAX_ADDRESS_LENGTH:
        return f"must be at most {MAX_ADDRESS_LENGTH} characters"
    if any(c.isspace() or not c.isprintable() for c in address):
        return "must not contain spaces or control characters"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "must be an address of the form local@domain"
    return None
