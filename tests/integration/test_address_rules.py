"""SPEC.md's address table through the real pair: what the MTA reports changes each
address, and the next preparation drops what is quarantined or denylisted.

The service runs with the significant error interval, and the timed releases, in
seconds; the stub's documented patterns give each address its fate.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from delivery.v1 import delivery_service_pb2 as pb

from tests.conftest import Servers
from tests.integration import flows
from tests.integration.conftest import Pair, open_pair
from tests.support.processes import await_until

VALID, ERRONEOUS, QUARANTINED, DENYLISTED = 1, 2, 3, 4
# Longer than a delivery's validity (3 s): every retry of one delivery falls within the
# interval of its first soft bounce, so each delivery counts one error.
INTERVAL = 3.5
VALIDITY = 3


async def start_pair(url: str, servers: Servers, *service_args: str) -> AsyncIterator[Pair]:
    processes = servers.pair(
        url,
        ("--retry-interval-ms", "200", "--engagement-delay-ms", "50"),
        ("--significant-error-interval", str(INTERVAL), *service_args),
    )
    async for p in open_pair(processes.service, processes.stub, url):
        yield p


@pytest.fixture
async def pair(fresh_db_url: str, servers: Servers) -> AsyncIterator[Pair]:
    async for p in start_pair(fresh_db_url, servers):
        yield p


@pytest.fixture
async def releasing_pair(fresh_db_url: str, servers: Servers) -> AsyncIterator[Pair]:
    """Timed releases in seconds: 2 without a counted error, 6 after a full mailbox, and
    a cleanup round every half second."""
    async for p in start_pair(
        fresh_db_url, servers,
        "--erroneous-release", "2", "--mailbox-full-release", "6",
        "--address-cleanup-interval", "0.5",
    ):  # fmt: skip
        yield p


def entry(pair: Pair, address: str) -> dict[str, Any]:
    """The address's entry as stored; an address never spoken of is VALID."""
    rows = pair.sql(
        "SELECT status, error_count, failure_type, failure_reason, smtp_code, smtp_status,"
        " smtp_text, changed_by, extract(epoch FROM last_error_time), message_id"
        " FROM addresses WHERE address = %s",
        address.lower(),
    )
    if not rows:
        return {"status": VALID, "error_count": 0}
    names = ("status", "error_count", "failure_type", "failure_reason", "smtp_code",
             "smtp_status", "smtp_text", "changed_by", "last_error", "message_id")  # fmt: skip
    return dict(zip(names, rows[0], strict=True))


async def wait_status(pair: Pair, address: str, status: int, timeout: float = 60.0) -> None:
    async def reached() -> bool:
        return entry(pair, address)["status"] == status

    await await_until(
        reached, timeout, message=lambda: f"{address}: {entry(pair, address)}, not {status}"
    )


async def wait_past(instant: float) -> None:
    """Waits until the clock is past `instant` (seconds since the epoch)."""

    async def past() -> bool:
        return time.time() > instant

    await await_until(past, max(0.0, instant - time.time()) + 10)


async def sent_and_finished(pair: Pair, emails: list[str], validity: int = VALIDITY) -> pb.Delivery:
    delivery = await flows.send(pair, flows.request(emails, validity_seconds=validity))
    await flows.wait_state(pair, delivery.id, pb.STATE_FINISHED)
    return delivery


async def dropped(pair: Pair, emails: list[str]) -> dict[str, int]:
    """Prepares a delivery to `emails`: the reason each dropped address was dropped for."""
    created = await pair.api.CreateDelivery(flows.request(emails), timeout=30)
    prepared = await pair.api.PrepareDelivery(
        pb.PrepareDeliveryRequest(delivery_id=created.delivery.id), timeout=60
    )
    return {d.recipient.email: d.reason for d in prepared.dropped}


async def test_a_hard_bounce_quarantines_at_once_and_the_next_preparation_drops_it(
    pair: Pair,
) -> None:
    await sent_and_finished(pair, ["hard@example.com", "ok@example.com"])
    hard = entry(pair, "hard@example.com")
    assert hard["status"] == QUARANTINED and hard["error_count"] == 1
    assert (hard["failure_type"], hard["failure_reason"]) == (
        pb.FAILURE_TYPE_HARD, pb.FAILURE_REASON_USER_UNKNOWN,
    )  # fmt: skip
    assert (hard["smtp_code"], hard["smtp_status"]) == (550, "5.1.1")
    assert "User unknown" in hard["smtp_text"]
    assert entry(pair, "ok@example.com")["status"] == VALID
    # Any case: the table is keyed by the lower-cased address.
    assert await dropped(pair, ["HARD@example.com", "ok@example.com"]) == {
        "HARD@example.com": pb.DROP_REASON_QUARANTINED
    }


async def test_five_significant_soft_errors_quarantine_four_leave_it_erroneous_and_targeted(
    pair: Pair,
) -> None:
    four, five = "soft-mailbox-full+four@example.com", "soft-mailbox-full+five@example.com"
    for n in range(1, 6):
        await sent_and_finished(pair, [four, five] if n < 5 else [five])
        assert entry(pair, five)["error_count"] == n
        # The next delivery's first soft bounce must come a significant interval later.
        await wait_past(float(entry(pair, five)["last_error"]) + INTERVAL + 0.1)
    assert entry(pair, four)["status"] == ERRONEOUS and entry(pair, four)["error_count"] == 4
    assert entry(pair, five)["status"] == QUARANTINED and entry(pair, five)["error_count"] == 5
    assert entry(pair, five)["failure_reason"] == pb.FAILURE_REASON_MAILBOX_FULL
    # ERRONEOUS is still targeted; QUARANTINED is not.
    assert await dropped(pair, [four, five]) == {five: pb.DROP_REASON_QUARANTINED}


async def test_a_success_brings_an_erroneous_address_back_to_valid(pair: Pair) -> None:
    # One soft bounce, then delivered at the retry.
    await sent_and_finished(pair, ["soft-1@example.com"], validity=30)
    got = entry(pair, "soft-1@example.com")
    assert (got["status"], got["error_count"], got["changed_by"]) == (VALID, 0, "feedback")


async def test_timed_releases_make_erroneous_addresses_valid_again(releasing_pair: Pair) -> None:
    """Released after 2 s without a counted error, or 6 s for a full mailbox."""
    pair = releasing_pair
    full, invalid = "soft-mailbox-full@example.com", "soft-invalid-domain@example.com"
    await sent_and_finished(pair, [full, invalid], validity=1)
    await wait_status(pair, invalid, VALID, timeout=30)
    released = entry(pair, invalid)
    assert (released["error_count"], released["changed_by"]) == (0, "cleanup")
    # A full mailbox waits longer: still erroneous while its 6 s are not over.
    full_entry = entry(pair, full)
    if time.time() < float(full_entry["last_error"] or 0) + 6:
        assert full_entry["status"] == ERRONEOUS
    await wait_status(pair, full, VALID, timeout=30)


async def test_a_complaint_denylists_the_address_and_changes_only_complaints(
    pair: Pair,
) -> None:
    delivery = await flows.send(pair, flows.request(["complaint@example.com", "ok@example.com"]))
    await wait_status(pair, "complaint@example.com", DENYLISTED)
    k = await flows.kpis(pair, delivery.id)
    assert (k.delivered, k.failed, k.complaints, k.complaint_percent) == (2, 0, 1, 50.0)
    logs = {log.email: log for log in await flows.logs(pair, delivery.id)}
    assert logs["complaint@example.com"].status == pb.SENDING_STATUS_SENT
    assert logs["complaint@example.com"].complained
    assert await dropped(pair, ["complaint@example.com"]) == {
        "complaint@example.com": pb.DROP_REASON_DENYLISTED
    }


@pytest.mark.parametrize("mode", [pb.FEEDBACK_MODE_WITHOUT_EFS, pb.FEEDBACK_MODE_EFS])
async def test_a_late_hard_bounce_fails_the_message_and_quarantines(
    pair: Pair, mode: pb.FeedbackMode.ValueType
) -> None:
    delivery = await flows.send(pair, flows.request(["late-hard-300@example.com"], mode))
    await wait_status(pair, "late-hard-300@example.com", QUARANTINED)
    (log,) = await flows.logs(pair, delivery.id)
    assert (log.status, log.failure_type) == (pb.SENDING_STATUS_FAILED, pb.FAILURE_TYPE_HARD)
    assert log.smtp_reply.code == 550
    k = await flows.kpis(pair, delivery.id)
    assert (k.delivered_percent, k.bounces_percent) == (0.0, 100.0)


async def test_a_hard_bounce_after_the_end_of_the_validity_changes_only_the_address(
    pair: Pair,
) -> None:
    # Delivered at once; the bounce comes 8 s later, after FINISHED (validity 2 s, and
    # 1 s of grace).
    address = "late-hard-8000@example.com"
    delivery = await flows.send(pair, flows.request([address], validity_seconds=2))
    await flows.wait_state(pair, delivery.id, pb.STATE_FINISHED)
    final = await flows.kpis(pair, delivery.id)
    assert entry(pair, address)["status"] == VALID
    await wait_status(pair, address, QUARANTINED)
    (log,) = await flows.logs(pair, delivery.id)
    assert log.status == pb.SENDING_STATUS_SENT
    assert await flows.kpis(pair, delivery.id) == final


async def test_an_ignored_auto_reply_changes_nothing(pair: Pair) -> None:
    delivery = await flows.send(pair, flows.request(["autoreply@example.com"]))
    (log,) = await flows.logs(pair, delivery.id)
    await flows.wait_event(pair, log.message_id, flows.IGNORED)
    (log,) = await flows.logs(pair, delivery.id)
    assert (log.status, log.failure_type) == (pb.SENDING_STATUS_SENT, pb.FAILURE_TYPE_UNSPECIFIED)
    got = entry(pair, "autoreply@example.com")
    assert (got["status"], got["error_count"], got.get("changed_by", "")) == (VALID, 0, "")
    (ignored,) = pair.sql(
        "SELECT reason, smtp_text FROM feedback_events WHERE message_id = %s AND kind = %s",
        log.message_id, flows.IGNORED,
    )  # fmt: skip
    assert ignored[0] == pb.FAILURE_REASON_AUTO_REPLY and "auto-replied" in ignored[1]
    k = await flows.kpis(pair, delivery.id)
    assert (k.delivered, k.failed, k.complaints) == (1, 0, 0)
