"""The AddressService through the real pair: the entries feedback makes (the stub's
address patterns: `hard+...@` bounces hard with 550 5.1.1, `hard-account-disabled@` with
550 5.2.1, `complaint@` complains), each filter of ListAddresses and its pages, changes
by hand and bulk releases (a dry run first) as preparation then sees them, bad input,
and the audit trail."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import address_service_pb2_grpc as adpb_grpc
from delivery.v1 import admin_service_pb2 as apb
from delivery.v1 import admin_service_pb2_grpc as apb_grpc
from delivery.v1 import delivery_service_pb2 as pb
from google.protobuf import timestamp_pb2

from delivery_service import admin
from tests.integration import flows
from tests.integration.conftest import Pair
from tests.support.callers import bearer, interceptors
from tests.support.processes import await_until

Book = adpb_grpc.AddressServiceStub

QUARANTINED = adpb.ADDRESS_STATUS_QUARANTINED
DENYLISTED = adpb.ADDRESS_STATUS_DENYLISTED
VALID = adpb.ADDRESS_STATUS_VALID
ERRONEOUS = adpb.ADDRESS_STATUS_ERRONEOUS

OUTAGE = ["hard+1@outage.example", "hard+2@outage.example", "hard+3@Outage.example"]
OTHERS = ["hard-account-disabled@other.example", "complaint@other.example"]


@pytest.fixture
async def book(pair: Pair) -> AsyncIterator[Book]:
    """The AddressService, as `pair.api` calls (the caller: every role but admin)."""
    async with grpc.aio.insecure_channel(
        pair.service.address, interceptors=interceptors(pair.caller)
    ) as channel:
        yield adpb_grpc.AddressServiceStub(channel)


async def listed(book: Book, page_size: int = 1000, **where: object) -> list[adpb.Address]:
    """Every entry a filter takes, following the pages."""
    out: list[adpb.Address] = []
    token = ""
    while True:
        page = await book.ListAddresses(
            adpb.ListAddressesRequest(
                filter=adpb.AddressFilter(**where),  # type: ignore[arg-type]
                page_size=page_size,
                page_token=token,
            ),
            timeout=10,
        )
        out += page.addresses
        token = page.next_page_token
        if not token:
            return out


def names(entries: Sequence[adpb.Address]) -> list[str]:
    return [e.address for e in entries]


async def bounced(pair: Pair, book: Book, emails: Sequence[str], changed: int) -> pb.Delivery:
    """Sends a delivery to `emails` and waits until `changed` entries are in the table."""
    delivery = await flows.send(pair, flows.request(emails))

    async def settled() -> bool:
        return len(await listed(book)) >= changed

    await await_until(settled, flows.TIMEOUT, message=f"{changed} address entries")
    return delivery


async def get(book: Book, address: str) -> adpb.Address:
    return (await book.GetAddress(adpb.GetAddressRequest(address=address), timeout=10)).address


async def set_status(
    book: Book, address: str, status: adpb.AddressStatus.ValueType
) -> adpb.Address:
    request = adpb.SetAddressStatusRequest(address=address, status=status)
    return (await book.SetAddressStatus(request, timeout=10)).address


async def release(book: Book, *, dry_run: bool = False, **where: object) -> int:
    request = adpb.ReleaseAddressesRequest(
        filter=adpb.AddressFilter(**where),  # type: ignore[arg-type]
        dry_run=dry_run,
    )
    return (await book.ReleaseAddresses(request, timeout=30)).released


async def prepared(pair: Pair, emails: Sequence[str]) -> pb.PrepareDeliveryResponse:
    created = await pair.api.CreateDelivery(flows.request(emails), timeout=30)
    return await pair.api.PrepareDelivery(
        pb.PrepareDeliveryRequest(delivery_id=created.delivery.id), timeout=60
    )


def drops(response: pb.PrepareDeliveryResponse) -> dict[str, int]:
    return {pb.DropReason.Name(c.reason): c.count for c in response.dropped_counts}


def micros(ts: timestamp_pb2.Timestamp) -> int:
    return int(ts.ToMicroseconds())


def at(value: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(value)
    return ts


async def test_feedback_fills_the_table_and_each_filter_takes_its_entries(
    pair: Pair, book: Book
) -> None:
    delivery = await bounced(pair, book, [*OUTAGE, *OTHERS, "fine@other.example"], 5)
    everything = await listed(book)
    # Lower-cased; a delivered address that never failed has no entry to list.
    assert sorted(names(everything)) == sorted(a.lower() for a in [*OUTAGE, *OTHERS])
    # Most recently changed first, then by address (descending) within the same time.
    keys = [(micros(e.update_time), e.address) for e in everything]
    assert keys == sorted(keys, reverse=True)

    hard = await get(book, "HARD+1@Outage.Example")
    assert hard.address == "hard+1@outage.example"
    assert hard.status == QUARANTINED
    assert hard.error_count == 1
    assert hard.failure_type == pb.FAILURE_TYPE_HARD
    assert hard.failure_reason == pb.FAILURE_REASON_USER_UNKNOWN
    assert (hard.smtp_reply.code, hard.smtp_reply.enhanced_status) == (550, "5.1.1")
    assert "User unknown" in hard.smtp_reply.text
    assert (hard.delivery_id, hard.changed_by) == (delivery.id, "feedback")
    assert hard.message_id > 0
    assert hard.first_error_time == hard.last_error_time == hard.update_time
    assert abs(hard.update_time.ToDatetime(tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)) < (
        dt.timedelta(minutes=5)
    )
    complaint = await get(book, "complaint@other.example")
    assert (complaint.status, complaint.changed_by) == (DENYLISTED, "feedback")
    assert not complaint.HasField("smtp_reply")
    assert not complaint.HasField("first_error_time")
    never = await get(book, "Never@Seen.example")
    assert never == adpb.Address(address="never@seen.example", status=VALID)

    assert names(await listed(book, statuses=[DENYLISTED])) == ["complaint@other.example"]
    assert len(await listed(book, statuses=[QUARANTINED, DENYLISTED])) == 5
    assert await listed(book, statuses=[VALID, ERRONEOUS]) == []
    disabled = await listed(book, failure_reason=pb.FAILURE_REASON_ACCOUNT_DISABLED)
    assert names(disabled) == ["hard-account-disabled@other.example"]
    assert disabled[0].smtp_reply.enhanced_status == "5.2.1"
    outage = sorted(a.lower() for a in OUTAGE)
    assert sorted(names(await listed(book, domain="OUTAGE.example"))) == outage
    # A multi-line reply's form ("550-5.1.1"), or its words, in any case.
    assert sorted(names(await listed(book, error_text="550-5.1.1"))) == outage
    assert sorted(names(await listed(book, error_text="USER UNKNOWN"))) == outage
    assert await listed(book, error_text="550-5.1.1", domain="other.example") == []

    # A time window: at or after, and before.
    times = sorted({micros(e.update_time) for e in everything})
    first, last = times[0], times[-1]
    assert len(await listed(book, changed_after=at(first))) == 5
    assert await listed(book, changed_after=at(last + 1)) == []
    assert await listed(book, changed_before=at(first)) == []
    window = await listed(book, changed_after=at(first), changed_before=at(last + 1))
    assert len(window) == 5
    newest = await listed(book, changed_after=at(last))
    assert {micros(e.update_time) for e in newest} == {last}

    # Pages of one: the same entries in the same order; the token is bound to its filter.
    assert await listed(book, page_size=1) == everything
    assert await listed(book, page_size=2, domain="outage.example") == await listed(
        book, domain="outage.example"
    )
    one = await book.ListAddresses(adpb.ListAddressesRequest(page_size=1), timeout=10)
    assert one.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as other_filter:
        await book.ListAddresses(
            adpb.ListAddressesRequest(
                page_size=1,
                page_token=one.next_page_token,
                filter=adpb.AddressFilter(domain="outage.example"),
            ),
            timeout=10,
        )
    assert other_filter.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (other_filter.value.details() or "").startswith("page_token: was issued for other")
    full = await book.ListAddresses(adpb.ListAddressesRequest(page_size=5), timeout=10)
    assert len(full.addresses) == 5 and full.next_page_token
    after = adpb.ListAddressesRequest(page_size=5, page_token=full.next_page_token)
    assert await book.ListAddresses(after, timeout=10) == adpb.ListAddressesResponse()


async def test_changes_by_hand_round_trip_and_preparation_follows_them(
    pair: Pair, book: Book
) -> None:
    before = dt.datetime.now(dt.UTC)
    put = await set_status(book, "Ann@Example.com", QUARANTINED)
    assert (put.address, put.status, put.changed_by) == ("ann@example.com", QUARANTINED, "caller")
    assert (put.delivery_id, put.message_id, put.error_count) == (0, 0, 0)
    assert not put.HasField("smtp_reply")
    assert before - dt.timedelta(seconds=1) <= put.update_time.ToDatetime(tzinfo=dt.UTC)
    assert await get(book, "ann@example.com") == put
    # Quarantining again changes nothing, not even the time.
    assert await set_status(book, "ann@example.com", QUARANTINED) == put
    assert drops(await prepared(pair, ["ann@example.com", "bob@example.com"])) == {
        "DROP_REASON_QUARANTINED": 1
    }

    denied = await set_status(book, "ann@example.com", DENYLISTED)
    assert denied.status == DENYLISTED
    assert drops(await prepared(pair, ["ANN@example.com"])) == {"DROP_REASON_DENYLISTED": 1}

    released = await set_status(book, "ann@example.com", VALID)
    assert (released.status, released.changed_by) == (VALID, "caller")
    assert released.update_time.ToNanoseconds() >= denied.update_time.ToNanoseconds()
    again = await prepared(pair, ["ann@example.com"])
    assert (again.to_deliver, drops(again)) == (1, {})
    # A released entry still lists (it changed), as VALID.
    assert [(e.address, e.status) for e in await listed(book)] == [("ann@example.com", VALID)]
    # An entry changed by hand has no reply: no error text matches it, not even the
    # separators of an empty one.
    for text in ("0", "-"):
        assert await listed(book, error_text=text) == [], text


async def test_a_bulk_release_counts_first_then_releases_and_preparation_targets_again(
    pair: Pair, book: Book
) -> None:
    await bounced(pair, book, [*OUTAGE, *OTHERS], 5)
    outage = sorted(a.lower() for a in OUTAGE)
    dropped = await prepared(pair, OUTAGE)
    assert (dropped.to_deliver, drops(dropped)) == (0, {"DROP_REASON_QUARANTINED": 3})

    table = await listed(book)
    assert await release(book, dry_run=True, domain="outage.example", error_text="550-5.1.1") == 3
    assert await listed(book) == table, "a dry run changes nothing"
    assert await release(book, domain="outage.example", error_text="550-5.1.1") == 3
    for entry in await listed(book, domain="outage.example"):
        assert (entry.status, entry.changed_by, entry.error_count) == (VALID, "caller", 0)
        assert entry.delivery_id == 0
    assert sorted(names(await listed(book, statuses=[VALID]))) == outage
    # The rest stays as it was; released entries are not released again.
    assert sorted((e.address, e.status) for e in await listed(book, domain="other.example")) == [
        ("complaint@other.example", DENYLISTED),
        ("hard-account-disabled@other.example", QUARANTINED),
    ]
    assert await release(book, dry_run=True, domain="outage.example", error_text="5.1.1") == 0

    kept = await prepared(pair, OUTAGE)
    assert (kept.to_deliver, drops(kept)) == (3, {})

    # Every entry of some statuses, named explicitly.
    assert await release(book, dry_run=True, statuses=[QUARANTINED, DENYLISTED]) == 2
    assert await release(book, statuses=[DENYLISTED]) == 1
    assert (await get(book, "complaint@other.example")).status == VALID
    assert await release(book, statuses=[ERRONEOUS, QUARANTINED, DENYLISTED]) == 1
    assert {e.status for e in await listed(book)} == {VALID}


# (RPC, request, the message's start: the field at fault, then what is wrong).
_LONG = "x" * 201
BAD: list[tuple[str, object, str]] = [
    ("GetAddress", adpb.GetAddressRequest(), "address: must not be empty"),
    ("GetAddress", adpb.GetAddressRequest(address="no-at-sign"), "address: must be an address"),
    ("GetAddress", adpb.GetAddressRequest(address="a b@x.com"), "address: must not contain"),
    ("GetAddress", adpb.GetAddressRequest(address="a@" + "x" * 300), "address: must be at most"),
    (
        "SetAddressStatus",
        adpb.SetAddressStatusRequest(address="a@example.com"),
        "status: required: ADDRESS_STATUS_VALID, ADDRESS_STATUS_QUARANTINED or "
        "ADDRESS_STATUS_DENYLISTED",
    ),
    (
        "SetAddressStatus",
        adpb.SetAddressStatusRequest(address="a@example.com", status=ERRONEOUS),
        "status: must be ADDRESS_STATUS_VALID, ADDRESS_STATUS_QUARANTINED or "
        "ADDRESS_STATUS_DENYLISTED, not ADDRESS_STATUS_ERRONEOUS",
    ),
    (
        "SetAddressStatus",
        adpb.SetAddressStatusRequest(address="a@example.com", status=99),  # type: ignore[arg-type]
        "status: must be",
    ),
    ("SetAddressStatus", adpb.SetAddressStatusRequest(status=VALID), "address: must not be empty"),
    ("ReleaseAddresses", adpb.ReleaseAddressesRequest(), "filter: required: at least one field"),
    (
        "ReleaseAddresses",
        adpb.ReleaseAddressesRequest(filter=adpb.AddressFilter(), dry_run=True),
        "filter: required: at least one field",
    ),
    (
        "ReleaseAddresses",
        adpb.ReleaseAddressesRequest(filter=adpb.AddressFilter(statuses=[QUARANTINED, VALID])),
        "filter.statuses[1]: must be ADDRESS_STATUS_ERRONEOUS, ADDRESS_STATUS_QUARANTINED or "
        "ADDRESS_STATUS_DENYLISTED, not ADDRESS_STATUS_VALID",
    ),
    (
        "ReleaseAddresses",
        adpb.ReleaseAddressesRequest(filter=adpb.AddressFilter(statuses=[DENYLISTED, DENYLISTED])),
        "filter.statuses[1]: DENYLISTED is named twice",
    ),
    (
        "ReleaseAddresses",
        adpb.ReleaseAddressesRequest(filter=adpb.AddressFilter(domain="example")),
        "filter.domain: must be a domain",
    ),
    (
        "ListAddresses",
        adpb.ListAddressesRequest(filter=adpb.AddressFilter(statuses=[0])),  # type: ignore[list-item]
        "filter.statuses[0]: required",
    ),
    (
        "ListAddresses",
        adpb.ListAddressesRequest(filter=adpb.AddressFilter(domain="@example.com")),
        "filter.domain: must be a domain",
    ),
    (
        "ListAddresses",
        adpb.ListAddressesRequest(filter=adpb.AddressFilter(domain="exa mple.com")),
        "filter.domain: must be a domain",
    ),
    (
        "ListAddresses",
        adpb.ListAddressesRequest(filter=adpb.AddressFilter(error_text=_LONG)),
        "filter.error_text: must be at most 200 characters",
    ),
    (
        "ListAddresses",
        adpb.ListAddressesRequest(filter=adpb.AddressFilter(error_text="   ")),
        "filter.error_text: must not be only spaces",
    ),
    (
        "ListAddresses",
        adpb.ListAddressesRequest(
            filter=adpb.AddressFilter(failure_reason=99)  # type: ignore[arg-type]
        ),
        "filter.failure_reason: required: one of",
    ),
    (
        "ListAddresses",
        adpb.ListAddressesRequest(
            filter=adpb.AddressFilter(changed_after=at(2_000_000), changed_before=at(2_000_000))
        ),
        "filter.changed_before: must be later than changed_after",
    ),
    (
        "ReleaseAddresses",
        adpb.ReleaseAddressesRequest(
            filter=adpb.AddressFilter(
                changed_after=timestamp_pb2.Timestamp(seconds=300_000_000_000)
            )
        ),
        "filter.changed_after: is not a valid timestamp",
    ),
    ("ListAddresses", adpb.ListAddressesRequest(page_size=-1), "page_size: must not be negative"),
    ("ListAddresses", adpb.ListAddressesRequest(page_size=1001), "page_size: must be at most 1000"),
    (
        "ListAddresses",
        adpb.ListAddressesRequest(page_token="not a token"),
        "page_token: is not a token this service issued",
    ),
]


async def test_bad_input_is_refused_naming_the_field_and_writes_nothing(
    pair: Pair, book: Book
) -> None:
    import base64

    forged = base64.urlsafe_b64encode(b"v3:12:0000000000000000:a@example.com").decode()
    cases = [
        *BAD,
        (
            "ListAddresses",
            adpb.ListAddressesRequest(page_token=forged),
            "page_token: was issued for other filters",
        ),
        (
            "ListAddresses",
            adpb.ListAddressesRequest(
                page_token=base64.urlsafe_b64encode(b"v3:x:y:not an address").decode()
            ),
            "page_token: is not a token this service issued",
        ),
    ]
    for rpc, request, expected in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await getattr(book, rpc)(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, request)
        assert (refused.value.details() or "").startswith(expected), (
            rpc,
            refused.value.details(),
        )
    assert pair.sql("SELECT count(*) FROM addresses") == [(0,)]
    assert pair.sql("SELECT count(*) FROM address_events") == [(0,)]


async def test_changes_are_audited_reads_are_not(pair: Pair, book: Book) -> None:
    root = bearer(await admin.create_operator(pair.database_url, "root", ["admin"]))
    rid = [("x-request-id", "address-change")]
    await book.SetAddressStatus(
        adpb.SetAddressStatusRequest(address="Ann@Example.com", status=DENYLISTED),
        metadata=rid,
        timeout=10,
    )
    assert await release(book, dry_run=True, domain="example.com") == 1
    assert await release(book, statuses=[DENYLISTED]) == 1
    await get(book, "ann@example.com")
    await listed(book)
    # Refused: a caller without manage_profiles.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await book.SetAddressStatus(
            adpb.SetAddressStatusRequest(address="bob@example.com", status=QUARANTINED),
            metadata=pair.sender,
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.insecure_channel(pair.service.address) as channel:
        trail = await apb_grpc.AdminServiceStub(channel).ListAuditEvents(
            apb.ListAuditEventsRequest(), metadata=root, timeout=10
        )
    events = [
        (e.operator, e.method.rsplit("/", 1)[1], e.target, e.code)
        for e in trail.events
        if "AddressService" in e.method
    ]
    assert events == [
        ("sender", "SetAddressStatus", "address bob@example.com", "PERMISSION_DENIED"),
        ("caller", "ReleaseAddresses", "addresses status DENYLISTED", "OK"),
        (
            "caller",
            "ReleaseAddresses",
            "addresses domain example.com; dry run",
            "OK",
        ),
        ("caller", "SetAddressStatus", "address ann@example.com", "OK"),
    ]
    assert "address-change" in {e.request_id for e in trail.events}
