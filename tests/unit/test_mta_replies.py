"""The SMTP replies the MTA stub's failure events carry (mta_stub.replies)."""

from __future__ import annotations

import pytest

from mta_stub import replies, scenarios
from mta_stub.replies import SmtpReply
from mta_stub.scenarios import BounceReason, EventKind

H = EventKind.HARD_BOUNCE
S = EventKind.SOFT_BOUNCE
R = BounceReason
ADDRESS = "Ann.Lee+news@Example.COM"


@pytest.mark.parametrize(
    ("kind", "reason", "expected"),
    [
        (
            H,
            R.USER_UNKNOWN,
            SmtpReply(
                550,
                "5.1.1",
                f"<{ADDRESS}>: Recipient address rejected: User unknown in virtual mailbox table",
            ),
        ),
        (
            H,
            R.ACCOUNT_DISABLED,
            SmtpReply(
                550, "5.2.1", f"<{ADDRESS}>: The email account that you tried to reach is disabled"
            ),
        ),
        (
            H,
            R.REFUSED,
            SmtpReply(
                554, "5.7.1", f"<{ADDRESS}>: Message rejected due to content or sender reputation"
            ),
        ),
        # The deprecated hard-<reason> patterns of reasons Adobe calls soft.
        (H, R.MAILBOX_FULL, SmtpReply(552, "5.2.2", f"<{ADDRESS}>: Mailbox full, quota exceeded")),
        (
            H,
            R.INVALID_DOMAIN,
            SmtpReply(550, "5.1.2", f"<{ADDRESS}>: Recipient address rejected: Domain not found"),
        ),
        (
            H,
            R.UNREACHABLE,
            SmtpReply(
                0,
                "5.4.4",
                "Host or domain name not found. Name service error for name=Example.COM "
                "type=MX: Host not found",
            ),
        ),
        (S, R.MAILBOX_FULL, SmtpReply(452, "4.2.2", f"<{ADDRESS}>: Mailbox full, try again later")),
        (
            S,
            R.INVALID_DOMAIN,
            SmtpReply(450, "4.1.2", f"<{ADDRESS}>: Recipient address rejected: Domain not found"),
        ),
        (
            S,
            R.UNREACHABLE,
            SmtpReply(0, "4.4.1", "connect to Example.COM:25: Connection timed out"),
        ),
        (
            S,
            R.NOT_DEFINED,
            SmtpReply(
                451, "4.3.0", f"<{ADDRESS}>: Temporary local problem, please try again later"
            ),
        ),
        (
            EventKind.IGNORED,
            R.AUTO_REPLY,
            SmtpReply(0, "", "Auto-Submitted: auto-replied (out of office)"),
        ),
        # Reasons the stub gives no such bounce: a generic reply of the kind.
        (H, R.NOT_DEFINED, SmtpReply(550, "5.0.0", f"<{ADDRESS}>: Delivery failed")),
        (
            S,
            R.USER_UNKNOWN,
            SmtpReply(451, "4.0.0", f"<{ADDRESS}>: Temporary failure, please try again later"),
        ),
    ],
)
def test_each_failure_gets_its_reply(
    kind: EventKind, reason: BounceReason, expected: SmtpReply
) -> None:
    assert replies.smtp_reply(kind, reason, ADDRESS) == expected


@pytest.mark.parametrize(
    "kind",
    [
        EventKind.DELIVERED,
        EventKind.OPENED,
        EventKind.CLICKED,
        EventKind.COMPLAINT,
        EventKind.EXPIRED,
    ],
)
def test_other_events_carry_no_reply(kind: EventKind) -> None:
    assert replies.smtp_reply(kind, R.UNSPECIFIED, ADDRESS) is None
    assert kind not in scenarios.REPLY_KINDS


def test_exactly_the_reply_kinds_carry_a_reply() -> None:
    for kind in EventKind:
        has = replies.smtp_reply(kind, R.MAILBOX_FULL, ADDRESS) is not None
        assert has == (kind in scenarios.REPLY_KINDS), kind


def test_a_long_text_is_cut_at_512_characters() -> None:
    address = "é" * 600 + "@example.com"
    reply = replies.smtp_reply(H, R.USER_UNKNOWN, address)
    assert reply is not None
    assert len(reply.text) == replies.MAX_TEXT == 512
    assert reply.text == f"<{address}>: Recipient"[:512]


def test_braces_in_an_address_are_text() -> None:
    reply = replies.smtp_reply(S, R.UNREACHABLE, "{address}@{domain}")
    assert reply == SmtpReply(0, "4.4.1", "connect to {domain}:25: Connection timed out")


def test_an_address_without_at_sign_is_its_own_domain() -> None:
    reply = replies.smtp_reply(S, R.UNREACHABLE, "localhost")
    assert reply is not None
    assert reply.text == "connect to localhost:25: Connection timed out"
