"""The receiving server's SMTP replies that the stub's failure events carry (mta.v1.SmtpReply).

Pure: a reply is a function of the event's kind, its reason and the recipient's address,
worked out each time the event is sent, so that the spool keeps only the address. The
texts are those of common servers (Postfix, Gmail, Exchange), so that an operator's
filter on error text ("550 5.1.1", a provider's domain) has something real to match.
"""

from __future__ import annotations

from typing import NamedTuple

from mta_stub.scenarios import BounceReason, EventKind

# The longest text of a reply (mta.v1.SmtpReply.text): longer text is cut.
MAX_TEXT = 512


class SmtpReply(NamedTuple):
    """A reply as mta.v1.SmtpReply has it: code 0 when no server answered."""

    code: int
    enhanced_status: str
    text: str


# (code, enhanced status, text); the text's {address} and {domain} are the recipient's.
_Template = tuple[int, str, str]

_HARD: dict[BounceReason, _Template] = {
    BounceReason.USER_UNKNOWN: (
        550,
        "5.1.1",
        "<{address}>: Recipient address rejected: User unknown in virtual mailbox table",
    ),
    BounceReason.ACCOUNT_DISABLED: (
        550,
        "5.2.1",
        "<{address}>: The email account that you tried to reach is disabled",
    ),
    BounceReason.REFUSED: (
        554,
        "5.7.1",
        "<{address}>: Message rejected due to content or sender reputation",
    ),
    # Those of the deprecated hard-<reason> patterns, of reasons Adobe calls soft.
    BounceReason.MAILBOX_FULL: (552, "5.2.2", "<{address}>: Mailbox full, quota exceeded"),
    BounceReason.INVALID_DOMAIN: (
        550,
        "5.1.2",
        "<{address}>: Recipient address rejected: Domain not found",
    ),
    # No server answered: the MTA's own words.
    BounceReason.UNREACHABLE: (
        0,
        "5.4.4",
        "Host or domain name not found. Name service error for name={domain} type=MX: "
        "Host not found",
    ),
}
_SOFT: dict[BounceReason, _Template] = {
    BounceReason.MAILBOX_FULL: (452, "4.2.2", "<{address}>: Mailbox full, try again later"),
    BounceReason.INVALID_DOMAIN: (
        450,
        "4.1.2",
        "<{address}>: Recipient address rejected: Domain not found",
    ),
    # No server answered: the MTA's own words.
    BounceReason.UNREACHABLE: (0, "4.4.1", "connect to {domain}:25: Connection timed out"),
    BounceReason.NOT_DEFINED: (
        451,
        "4.3.0",
        "<{address}>: Temporary local problem, please try again later",
    ),
}
# Reasons without a reply of their own (the stub gives them no such bounce).
_HARD_OTHER: _Template = (550, "5.0.0", "<{address}>: Delivery failed")
_SOFT_OTHER: _Template = (451, "4.0.0", "<{address}>: Temporary failure, please try again later")
# An out-of-office reply is a message, not an SMTP reply: no code, no enhanced status.
_AUTO_REPLY: _Template = (0, "", "Auto-Submitted: auto-replied (out of office)")


def smtp_reply(kind: EventKind, reason: BounceReason, address: str) -> SmtpReply | None:
    """The reply a failure event carries: hard and soft bounces (by reason) and ignored
    auto-replies; None for the others (delivered, opened, clicked, complaint, expired).

    An expiry carries none: it is the MTA giving up, and the soft bounces before it carry
    the replies that explain it.
    """
    if kind is EventKind.HARD_BOUNCE:
        template = _HARD.get(reason, _HARD_OTHER)
    elif kind is EventKind.SOFT_BOUNCE:
        template = _SOFT.get(reason, _SOFT_OTHER)
    elif kind is EventKind.IGNORED:
        template = _AUTO_REPLY
    else:
        return None
    code, status, text = template
    domain = address.rpartition("@")[2]
    return SmtpReply(code, status, text.format(address=address, domain=domain)[:MAX_TEXT])
