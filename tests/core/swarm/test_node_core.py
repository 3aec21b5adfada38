"""The node's decisions (:mod:`p2psync.swarm.node_core`) and its wire schema
(:mod:`p2psync.swarm.messages`), tested directly: no network, no store, no Trio."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from p2psync.clock import TEST_EPOCH_MS
from p2psync.errors import DecodeError, RpcError
from p2psync.identity import Identity, message_hash
from p2psync.swarm import repair
from p2psync.swarm.auth import AuthSigner, ClientAuth
from p2psync.swarm.constants import (
    CLOCK_SKEW_MS,
    MAX_DATA_BYTES,
    MAX_HASHES_PER_REQUEST,
    MAX_NAMESPACE,
    MAX_STORE_BATCH,
    MAX_STORE_BATCH_BYTES,
    MAX_TTL_MS,
    MIN_TTL_MS,
    RETRIEVE_LIMIT,
)
from p2psync.swarm.messages import (
    LISTING_PAGE,
    SESSION_ID_CHARS,
    DeleteReply,
    DeleteRequest,
    ExpireReply,
    ExpireRequest,
    GetSwarmRequest,
    HeldReply,
    InfoReply,
    KeysRequest,
    LookupReply,
    LookupRequest,
    Message,
    Notification,
    RepairDigestReply,
    RepairDigestRequest,
    RepairListReply,
    RepairListRequest,
    ReplicateReply,
    RetrieveReply,
    RetrieveRequest,
    RowBatch,
    StoreBatchReply,
    StoreBatchRequest,
    StoreReply,
    StoreRequest,
    SubscribeRequest,
    SwarmReply,
    store_batch_cost,
    store_batches,
)
from p2psync.swarm.node_core import (
    BATCH_BYTES,
    HAND_OVER_ELDER_MS,
    START,
    SWITCH_REWIND_MS,
    UNKNOWN_CURSOR_MS,
    NodeCore,
    Push,
    ReadOrder,
    RepairListings,
    Replicate,
    StrangerPushes,
    Subscriptions,
    batches,
    first_batch,
    may_forget,
)
from p2psync.swarm.proof import proof_from_request
from p2psync.swarm.records import row_to_wire
from p2psync.swarm.ring import NodeInfo, SwarmMap
from p2psync.swarm.rows import RowSummary, StoredMessage
from p2psync.wire import MAX_FRAME_BYTES, Fields, encode_cbor

NOW = TEST_EPOCH_MS
ALICE = Identity.from_label("alice")
NODES = [
    NodeInfo(Identity.from_label(f"node-{i}").ed25519_public.hex(), f"mem:{i}") for i in range(12)
]


def core_of(nodes: list[NodeInfo], me: NodeInfo | None = None, quorum: int = 2) -> NodeCore[str]:
    core: NodeCore[str] = NodeCore(
        (me or nodes[0]).pubkey, started_ms=NOW, store_quorum=quorum, max_subscriptions=2
    )
    core.listed(nodes)
    return core


def owner_outside(core: NodeCore[str]) -> Identity:
    return next(
        identity
        for identity in (Identity.from_label(f"owner-{i}") for i in range(200))
        if not core.owns(identity.session_id)
    )


def row(
    data: bytes = b"x", *, owner: Identity = ALICE, namespace: int = 0, **fields: Any
) -> StoredMessage:
    values: dict[str, Any] = {
        "pubkey": owner.session_id,
        "namespace": namespace,
        "hash": message_hash(data),
        "timestamp_ms": NOW,
        "expiry_ms": NOW + 60_000,
        "data": data,
        "order_ms": NOW,
    }
    values.update(fields)
    return StoredMessage(**values)


def store_request(**fields: Any) -> StoreRequest:
    values: dict[str, Any] = {
        "pubkey": ALICE.session_id,
        "namespace": 0,
        "ttl_ms": 60_000,
        "timestamp_ms": NOW,
        "data": b"hello",
    }
    values.update(fields)
    return StoreRequest(**values)


# --- read order and cursors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("served_ms", "now_ms", "expected"),
    [
        (None, NOW + 5, NOW + 5),  # nothing served since the start: now, if after it
        (None, NOW - 5, NOW + 1),  # a clock behind the start still orders after it
        (NOW + 100, NOW + 5, NOW + 101),  # after what readers have seen
        (NOW + 100, NOW + 500, NOW + 500),
    ],
)
def test_a_new_row_is_placed_after_everything_served(
    served_ms: int | None, now_ms: int, expected: int
) -> None:
    order = ReadOrder(NOW)
    if served_ms is not None:
        order.served([row(order_ms=served_ms)])
    assert order.next_order((ALICE.session_id, 0), now_ms) == expected
    assert order.next_order((ALICE.session_id, 1), now_ms) == max(now_ms, NOW + 1)


def test_cursors_issued_here_are_exact_and_others_rewound() -> None:
    order = ReadOrder(NOW)
    issued = row(b"issued", order_ms=NOW + 50_000)
    order.served([row(b"first", order_ms=NOW + 10), issued])
    owner = ALICE.session_id
    assert order.after(owner, 0, issued.hash, (issued.order_ms, issued.hash)) == (
        issued.order_ms,
        issued.hash,
    )
    foreign = message_hash(b"first")  # held here, but not a cursor this node handed out
    assert order.after(owner, 0, foreign, (NOW + 40_000, foreign)) == (
        NOW + 40_000 - SWITCH_REWIND_MS,
        b"",
    )
    assert order.after(owner, 0, foreign, (10, foreign)) == (0, b"")
    assert order.after(owner, 0, foreign, None) == START


def test_old_cursors_are_forgotten_first() -> None:
    order = ReadOrder(NOW, issued_cursors=2)
    rows = [row(b"%d" % i, order_ms=NOW + i) for i in range(3)]
    for r in rows:
        order.served([r])
    assert [order.issued(r.pubkey, 0, r.hash) for r in rows] == [False, True, True]


def test_a_cursor_no_peer_could_place_is_not_asked_about_again_for_a_while() -> None:
    order = ReadOrder(NOW, unknown_cursors=2)
    owner, gone = ALICE.session_id, message_hash(b"swept")
    assert order.worth_asking(owner, 0, gone, NOW)
    order.not_found(owner, 0, gone, NOW)
    assert not order.worth_asking(owner, 0, gone, NOW + UNKNOWN_CURSOR_MS - 1)
    assert order.worth_asking(owner, 1, gone, NOW)  # another stream
    assert order.worth_asking(owner, 0, gone, NOW + UNKNOWN_CURSOR_MS)
    # Bounded: past the cap the oldest is asked about again.
    others = [message_hash(b"%d" % i) for i in range(3)]
    for digest in others:
        order.not_found(owner, 0, digest, NOW)
    assert [order.worth_asking(owner, 0, d, NOW) for d in others] == [True, False, False]


class ReadOrderMachine(RuleBasedStateMachine):
    """Rows arrive (the clock may go back), readers read pages from their cursors and the
    node forgets old cursors: no reader ever misses a row, whatever the interleaving."""

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.order = ReadOrder(NOW - 1_000, issued_cursors=2)
        self.rows: dict[bytes, int] = {}  # hash -> order_ms
        self.cursors: list[bytes | None] = [None, None, None]
        self.seen: list[set[bytes]] = [set(), set(), set()]
        self.count = 0

    @rule(step=st.integers(-40_000, 40_000))
    def time_passes(self, step: int) -> None:
        self.now = max(0, self.now + step)

    @rule(arrivals=st.integers(1, 3))
    def rows_arrive(self, arrivals: int) -> None:
        for _ in range(arrivals):
            self.count += 1
            digest = message_hash(b"%d" % self.count)
            self.rows[digest] = self.order.next_order((ALICE.session_id, 0), self.now)

    @rule(reader=st.integers(0, 2), limit=st.integers(1, 4))
    def reader_reads_a_page(self, reader: int, limit: int) -> None:
        cursor = self.cursors[reader]
        after = START
        if cursor is not None:
            position = (self.rows[cursor], cursor)
            after = self.order.after(ALICE.session_id, 0, cursor, position)
        ordered = sorted((order_ms, digest) for digest, order_ms in self.rows.items())
        page = [(o, d) for o, d in ordered if (o, d) > after][:limit]
        if not page:
            return
        self.order.served([row(order_ms=o, hash=d) for o, d in page])
        self.seen[reader].update(d for _, d in page)
        self.cursors[reader] = page[-1][1]

    @invariant()
    def no_reader_skips_a_row(self) -> None:
        for cursor, seen in zip(self.cursors, self.seen, strict=True):
            if cursor is None:
                continue
            position = (self.rows[cursor], cursor)
            behind = {d for d, o in self.rows.items() if (o, d) <= position}
            assert behind <= seen


TestReadOrderMachine = ReadOrderMachine.TestCase
TestReadOrderMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# --- subscriptions -------------------------------------------------------------------------


def test_subscriptions_are_bounded_per_connection() -> None:
    subscriptions: Subscriptions[str] = Subscriptions(limit=2)
    assert subscriptions.add(("a", 0), "conn")
    assert not subscriptions.add(("a", 0), "conn")  # already: nothing more to undo later
    assert subscriptions.add(("a", 1), "conn")
    with pytest.raises(RpcError) as refused:
        subscriptions.add(("b", 0), "conn")
    assert refused.value.code == "rate_limited"
    assert subscriptions.of(("b", 0)) == ()
    assert subscriptions.add(("b", 0), "other")
    subscriptions.remove(("a", 0), "conn")
    assert subscriptions.add(("b", 0), "conn")
    assert set(subscriptions.of(("b", 0))) == {"conn", "other"}
    subscriptions.remove(("zz", 0), "conn")  # never held: no slot given back
    with pytest.raises(RpcError):
        subscriptions.add(("c", 0), "conn")


# --- client requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (store_request(data=b"x" * (MAX_DATA_BYTES + 1)), "too_large"),
        (store_request(ttl_ms=MIN_TTL_MS - 1), "bad_ttl"),
        (store_request(ttl_ms=MAX_TTL_MS + 1), "bad_ttl"),
        (store_request(timestamp_ms=NOW - CLOCK_SKEW_MS - 1), "clock_skew"),
        (store_request(timestamp_ms=NOW + CLOCK_SKEW_MS + 1), "clock_skew"),
    ],
)
def test_stores_out_of_bounds_are_refused_with_their_code(
    request_: StoreRequest, code: str
) -> None:
    with pytest.raises(RpcError) as refused:
        core_of(NODES[:6]).new_row(request_, NOW)
    assert refused.value.code == code


def test_a_store_becomes_a_row_at_the_next_read_position() -> None:
    core = core_of(NODES[:6])
    core.read_order.served([row(order_ms=NOW + 500)])
    new = core.new_row(store_request(ttl_ms=MIN_TTL_MS, timestamp_ms=NOW - 10), NOW)
    assert new == StoredMessage(
        ALICE.session_id,
        0,
        message_hash(b"hello"),
        NOW - 10,
        NOW - 10 + MIN_TTL_MS,
        b"hello",
        NOW + 501,
    )


def test_requests_for_another_swarm_name_the_right_one() -> None:
    core = core_of(NODES)
    stranger = owner_outside(core)
    with pytest.raises(RpcError) as refused:
        core.new_row(store_request(pubkey=stranger.session_id), NOW)
    assert refused.value.code == "wrong_swarm"
    right = SwarmReply.from_wire(refused.value.data)
    assert right == core.swarm_of(stranger.session_id)
    assert core.pubkey not in {n.pubkey for n in right.nodes}
    with pytest.raises(RpcError) as not_yet:
        NodeCore(
            NODES[0].pubkey, started_ms=NOW, store_quorum=2, max_subscriptions=1
        ).require_swarm(ALICE.session_id)
    assert not_yet.value.code == "unavailable"


@pytest.mark.parametrize(
    ("members", "quorum", "needed"), [(6, 2, 1), (6, 3, 2), (1, 2, 0), (2, 5, 1)]
)
def test_peers_needed_for_a_quorum(members: int, quorum: int, needed: int) -> None:
    core = core_of(NODES[:members], quorum=quorum)
    assert len(core.peers()) == members - 1
    assert core.peers_needed() == needed


def test_new_rows_go_to_subscribers_and_count_as_served() -> None:
    core = core_of(NODES[:6])
    stream = (ALICE.session_id, 0)
    assert core.subscribe(stream, "phone")
    new = row(b"new", order_ms=NOW + 700)
    tombstone = dataclasses.replace(row(b"gone"), data=None)
    other = row(b"other", namespace=1)
    effects = core.accepted([new, tombstone, other])
    assert effects == [
        Push("phone", Notification(ALICE.session_id, 0, (Message.of_row(new),))),
        Replicate((new, tombstone, other)),
    ]
    assert core.read_order.next_order(stream, NOW) == NOW + 701
    assert core.read_order.issued(ALICE.session_id, 0, new.hash)
    assert core.accepted([]) == []


def test_rows_from_peers_are_kept_only_when_owned_and_alive_and_placed_here() -> None:
    core = core_of(NODES, me=SwarmMap.build(NODES).nodes_for_key(ALICE.x25519_public)[0])
    stranger = owner_outside(core)
    core.read_order.served([row(order_ms=NOW + 900)])
    mine = row(b"mine", order_ms=2**62)  # a peer's order is never taken
    rows = [mine, row(b"expired", expiry_ms=NOW), row(b"foreign", owner=stranger)]
    assert core.placed(rows, NOW) == [dataclasses.replace(mine, order_ms=NOW + 901)]
    assert core.refused_owners(rows) == (stranger.session_id,)


def _alice_members(nodes: list[NodeInfo]) -> set[str]:
    return {n.pubkey for n in SwarmMap.build(nodes).members_of_owner(ALICE.session_id)}


def test_a_node_trusts_its_swarm_and_nodes_that_served_an_owner_under_maps_it_remembers() -> None:
    """Six nodes, one swarm; six more join and Alice's swarm is now half of them. Her
    node trusts its current peers and the old members that handed her over; a node that
    never served her is a stranger, whose rows of hers are the ones charged."""
    first, later = NODES[:6], NODES[6:]
    me = next(n for n in first if n.pubkey in _alice_members(NODES))
    core = core_of(first, me=me)
    core.listed(NODES)
    members = _alice_members(NODES)
    assert {p.pubkey for p in core.peers()} == members - {me.pubkey}
    for node in first:
        assert core.trusts(node.pubkey, ALICE.session_id)  # a peer, or it handed her over
    strangers = [n for n in later if n.pubkey not in members]
    assert strangers
    for node in strangers:
        assert not core.trusts(node.pubkey, ALICE.session_id)
    rows = [row(b"a"), row(b"b")]
    assert core.from_stranger(strangers[0].pubkey, rows) == rows
    assert core.from_stranger(first[1].pubkey, rows) == []


def test_a_nodes_first_listing_remembers_the_map_before_it_joined() -> None:
    """A node that starts into a listing it is in already, its join having split one
    swarm into two, trusts the nodes that served an owner until it joined (they hand the
    owner's rows over to it) and not the spares that never did."""
    me = NodeInfo(Identity.from_label("newcomer").ed25519_public.hex(), "mem:new", 0)
    before = [  # one swarm of eight, in this ring order, and three spares
        NodeInfo(Identity.from_label(f"node-{i}").ed25519_public.hex(), f"mem:{i}", (i + 1) << 59)
        for i in range(11)
    ]
    nodes = [me, *before]
    owner = next(
        o.session_id
        for o in (Identity.from_label(f"owner-{i}") for i in range(100))
        if me in SwarmMap.build(nodes).members_of_owner(o.session_id)
    )

    def members(listed: list[NodeInfo]) -> set[str]:
        return {n.pubkey for n in SwarmMap.build(listed).members_of_owner(owner)}

    core = core_of(nodes, me=me)
    handing_over = members(before) - members(nodes)
    never_served = {n.pubkey for n in before} - members(before) - members(nodes)
    assert handing_over and never_served
    assert all(core.trusts(node, owner) for node in handing_over)
    assert not any(core.trusts(node, owner) for node in never_served)


def test_the_rows_a_stranger_pushed_are_remembered_up_to_a_bound() -> None:
    pushes = StrangerPushes(limit=3, per_node=3)
    keys = [(ALICE.session_id, 0, bytes([i]) * 32) for i in range(4)]
    pushes.pushed("n1", keys[:2])
    pushes.pushed("n2", keys[2:])
    assert pushes.pushed_by("n1", keys[1]) and not pushes.pushed_by("n2", keys[1])
    assert not pushes.pushed_by("n2", keys[2])  # past the bound, the pusher gives way
    assert pushes.pushed_by("n2", keys[3])
    flood = [(ALICE.session_id, 1, bytes([i]) * 32) for i in range(10)]
    pushes.pushed("n3", flood)  # pushes out its own rows, not n1's or n2's
    assert pushes.pushed_by("n1", keys[1]) and pushes.pushed_by("n2", keys[3])
    assert pushes.pushed_by("n3", flood[-1]) and not pushes.pushed_by("n3", flood[0])


# --- repair listings, batches, hand-over ------------------------------------------------------


def summaries(count: int) -> list[RowSummary]:
    return [
        RowSummary(ALICE.session_id, 0, message_hash(b"%d" % i), NOW, NOW + 1, False, False)
        for i in range(count)
    ]


def test_a_bucket_listing_is_built_once_per_round_whatever_its_pages() -> None:
    built: list[int] = []
    rows = summaries(3 * LISTING_PAGE + 5)

    def listing(bucket: int) -> list[RowSummary]:
        built.append(bucket)
        return rows

    listings = RepairListings(listing)
    collected: list[RowSummary] = []
    while True:
        page = listings.page("peer", 7, len(collected))
        collected.extend(page.items)
        if not page.more:
            break
    assert collected == rows and built == [7]
    assert listings.page("peer", 7, 0).more and built == [7, 7]  # a new round lists again
    assert listings.page("other", 7, LISTING_PAGE).more and built == [7, 7, 7]
    assert listings.page("peer", 8, LISTING_PAGE).more and built[-1] == 8  # not its listing
    listings.forget({"other"})
    listings.page("peer", 8, 2 * LISTING_PAGE)
    assert len(built) == 5


def test_repair_list_pages_cost_one_listing() -> None:
    """The pages of a bucket of n rows cost O(n) summaries in all, not O(n²)."""
    listed = 0
    rows = summaries(20 * LISTING_PAGE)

    def listing(bucket: int) -> list[RowSummary]:
        nonlocal listed
        listed += len(rows)
        return rows

    listings = RepairListings(listing)
    offset = 0
    while listings.page("peer", 0, offset).more:
        offset += LISTING_PAGE
    assert listed == len(rows)


def test_batches_fit_a_frame() -> None:
    big = [row(bytes([i]) * 60_000) for i in range(5)]
    parts = list(batches(big))
    assert [len(p) for p in parts] == [1] * 5  # two of them would not fit BATCH_BYTES
    assert BATCH_BYTES < 2 * 60_000
    small = [row(b"%d" % i) for i in range(10)]
    assert list(batches(small)) == [small]
    assert list(batches([])) == []
    assert first_batch([None, big[0], None, big[1]]) == [big[0]]
    assert first_batch([None]) == []


def test_the_tombstones_of_one_delete_share_its_proof_in_a_batch() -> None:
    """A delete of the most hashes a request takes is that many tombstones, each with the
    owner's whole signed delete (33 KB): sent once a batch, the proof leaves every
    batch within a frame and a few of them carry the lot (counted once a row, a 300-hash
    delete made a 3.1 MB batch; counted but sent with each row, 1 000 made 333 batches).
    The receiver takes each row with the proof it names, and refuses an index that
    names none."""
    digests = [message_hash(b"m%d" % i) for i in range(MAX_HASHES_PER_REQUEST)]
    auth = AuthSigner(ALICE).sign("delete", 0, NOW, digests)
    proof = proof_from_request("delete", 0, digests, auth).encode()
    assert len(proof) > 32 * MAX_HASHES_PER_REQUEST
    tombstones = [
        dataclasses.replace(row(b"m%d" % i), data=None, proof=proof) for i in range(len(digests))
    ]
    parts = list(batches(tombstones))
    assert len(parts) <= 2 and [r for part in parts for r in part] == tombstones
    for part in parts:
        wire = RowBatch(tuple(part)).to_wire()
        assert len(encode_cbor(wire)) < MAX_FRAME_BYTES and wire["proofs"] == [proof]
        assert RowBatch.from_wire(wire, NOW) == RowBatch(tuple(part))
    wire = RowBatch(tuple(parts[0][:2])).to_wire()
    wire["rows"][1][7] = 1  # names a second proof the batch does not carry
    assert RowBatch.from_wire(wire, NOW).refused == (
        "a row's proof index names no proof of its batch",
    )
    inline = {"rows": [row_to_wire(tombstones[0])]}  # as a node from before sends it
    assert RowBatch.from_wire(inline, NOW).rows == (tombstones[0],)
    # and what it reads: a batch without proofs is the form it knows
    assert RowBatch((row(b"live"),)).to_wire() == {"rows": [row_to_wire(row(b"live"))]}


@pytest.mark.parametrize(
    ("takers", "listed_ago_ms", "forget"),
    [
        (2, [HAND_OVER_ELDER_MS, 0], True),
        (2, [0, 0], False),  # fresh nodes only
        (1, [HAND_OVER_ELDER_MS, HAND_OVER_ELDER_MS], False),  # one did not take them
        (2, [None, HAND_OVER_ELDER_MS - 1], False),  # never seen listed counts as new
    ],
)
def test_an_owner_is_forgotten_only_once_an_established_swarm_holds_it(
    takers: int, listed_ago_ms: list[int | None], forget: bool
) -> None:
    targets = NODES[:2]
    first_listed = {
        n.pubkey: NOW - ago
        for n, ago in zip(targets, listed_ago_ms, strict=True)
        if ago is not None
    }
    assert may_forget(targets[:takers], targets, first_listed, NOW) == forget


# --- wire schema -------------------------------------------------------------------------------

_AUTH = AuthSigner(ALICE).sign("retrieve", 0, NOW)
_ROW = row(b"row")
_ROWS = (_ROW, row(b"other", namespace=MAX_NAMESPACE))
_SUMMARY = summaries(1)[0]
_KEY = (ALICE.session_id, 0, _ROW.hash)
_MESSAGE = Message.of_row(_ROW)

#: One of each message, with how to decode it.
MESSAGES: list[tuple[Any, Callable[[object], Any]]] = [
    (InfoReply("p2psync-storage/1", NODES[0].pubkey, 2**63, 5), InfoReply.from_wire),
    (GetSwarmRequest(ALICE.session_id), GetSwarmRequest.from_wire),
    (SwarmReply(2**64 - 1, tuple(NODES[:2])), SwarmReply.from_wire),
    (store_request(), StoreRequest.from_wire),
    (StoreReply(_ROW.hash, NOW), StoreReply.from_wire),
    (StoreBatchRequest((store_request(),) * MAX_STORE_BATCH), StoreBatchRequest.from_wire),
    (
        StoreBatchReply((StoreReply(_ROW.hash, NOW),)),
        lambda v: StoreBatchReply.from_wire(v, stores=1),
    ),
    (RetrieveRequest(ALICE.session_id, 3, None, _AUTH), RetrieveRequest.from_wire),
    (
        RetrieveRequest(ALICE.session_id, 3, _ROW.hash, _AUTH, RETRIEVE_LIMIT),
        RetrieveRequest.from_wire,
    ),
    (RetrieveReply((_MESSAGE,), True), RetrieveReply.from_wire),
    (DeleteRequest(ALICE.session_id, 0, (_ROW.hash,), _AUTH), DeleteRequest.from_wire),
    (DeleteReply((_ROW.hash,)), DeleteReply.from_wire),
    (ExpireRequest(ALICE.session_id, 1, (_ROW.hash,), NOW, _AUTH), ExpireRequest.from_wire),
    (ExpireReply(()), ExpireReply.from_wire),
    (SubscribeRequest(ALICE.session_id, 2, _AUTH), SubscribeRequest.from_wire),
    (Notification(ALICE.session_id, 2, (_MESSAGE,)), Notification.from_wire),
    (RowBatch(_ROWS), lambda v: RowBatch.from_wire(v, NOW)),
    (ReplicateReply((ALICE.session_id,)), ReplicateReply.from_wire),
    (LookupRequest(ALICE.session_id, 0, _ROW.hash), LookupRequest.from_wire),
    (LookupReply(_ROW), lambda v: LookupReply.from_wire(v, NOW)),
    (LookupReply(None), lambda v: LookupReply.from_wire(v, NOW)),
    (RepairDigestRequest(), RepairDigestRequest.from_wire),
    (RepairDigestReply((repair.ZERO_DIGEST,) * repair.BUCKETS), RepairDigestReply.from_wire),
    (RepairListRequest(repair.BUCKETS - 1, 2**32), RepairListRequest.from_wire),
    (RepairListReply((_SUMMARY,), False), RepairListReply.from_wire),
    (KeysRequest((_KEY,) * LISTING_PAGE), KeysRequest.from_wire),
    (RowBatch(_ROWS[:1]), lambda v: RowBatch.from_wire(v, NOW, max_rows=1)),
    (HeldReply(LISTING_PAGE), HeldReply.from_wire),
]


@pytest.mark.parametrize(("message", "decode"), MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Any, decode: Callable[[object], Any]) -> None:
    assert decode(message.to_wire()) == message


def test_every_message_type_is_covered() -> None:
    from p2psync.swarm import messages

    types = {
        obj
        for _, obj in inspect.getmembers(messages, inspect.isclass)
        if obj.__module__ == messages.__name__
    }
    assert types == {type(m) for m, _ in MESSAGES} | {Message}


def _with(message: Any, **changes: Any) -> dict[str, Any]:
    wire: dict[str, Any] = message.to_wire()
    wire.update(changes)
    return wire


_STORE = store_request()
_ONE_STORED = {"hash": _ROW.hash, "expiry": NOW}
_RETRIEVE = RetrieveRequest(ALICE.session_id, 0, None, _AUTH)
_EXPIRE = ExpireRequest(ALICE.session_id, 0, (_ROW.hash,), NOW, _AUTH)


@pytest.mark.parametrize(
    ("decode", "wire"),
    [
        (StoreRequest.from_wire, _with(_STORE, namespace=-1)),
        (StoreRequest.from_wire, _with(_STORE, namespace=MAX_NAMESPACE + 1)),
        (StoreRequest.from_wire, _with(_STORE, namespace=True)),
        (StoreRequest.from_wire, _with(_STORE, pubkey="05" + "ab" * 33)),
        (StoreRequest.from_wire, _with(_STORE, ttl=2**63)),
        (StoreRequest.from_wire, _with(_STORE, timestamp=-1)),
        (StoreRequest.from_wire, _with(_STORE, data="text")),
        (StoreRequest.from_wire, _with(_STORE, extra=1)),
        (RetrieveRequest.from_wire, _with(_RETRIEVE, last_hash=b"\0" * 31)),
        (RetrieveRequest.from_wire, _with(_RETRIEVE, limit=RETRIEVE_LIMIT + 1)),
        (RetrieveRequest.from_wire, _with(_RETRIEVE, auth={**_AUTH.to_wire(), "signature": b"x"})),
        (RetrieveRequest.from_wire, _with(_RETRIEVE, auth={**_AUTH.to_wire(), "timestamp": -1})),
        (ExpireRequest.from_wire, _with(_EXPIRE, expiry=2**63)),
        (ExpireRequest.from_wire, _with(_EXPIRE, hashes=[_ROW.hash] * 1001)),
        (DeleteReply.from_wire, {"deleted": [b"\0" * 33]}),
        (lambda v: DeleteReply.from_wire(v, asked=1), {"deleted": [_ROW.hash] * 2}),
        (StoreReply.from_wire, {"hash": b"\0" * 31, "expiry": NOW}),
        (StoreBatchRequest.from_wire, {"stores": []}),
        (StoreBatchRequest.from_wire, {"stores": [_STORE.to_wire()] * (MAX_STORE_BATCH + 1)}),
        (StoreBatchRequest.from_wire, {"stores": [_STORE.to_wire(), _with(_STORE, ttl=2**63)]}),
        (StoreBatchRequest.from_wire, {"stores": [_STORE.to_wire()], "extra": 1}),
        (StoreBatchRequest.from_wire, {"stores": [_with(_STORE, data=b"x" * 40_000)] * 2}),
        (
            lambda v: StoreBatchReply.from_wire(v, stores=2),
            {"results": [{"hash": _ROW.hash, "expiry": NOW}]},
        ),
        (lambda v: StoreBatchReply.from_wire(v, stores=1), {"results": [{"error": {"code": 5}}]}),
        (RetrieveReply.from_wire, {"messages": [{**_MESSAGE.to_wire(), "data": b"forged"}]}),
        (RetrieveReply.from_wire, {"messages": [_MESSAGE.to_wire()] * (RETRIEVE_LIMIT + 1)}),
        (Notification.from_wire, _with(Notification(ALICE.session_id, 0, ()), more=True)),
        (SwarmReply.from_wire, {"swarm": -1, "nodes": []}),
        (SwarmReply.from_wire, {"swarm": 0, "nodes": [{"pubkey": "ab", "url": 5}]}),
        (InfoReply.from_wire, _with(InfoReply("v", "n", 0, 0), stored=-1)),
        (ReplicateReply.from_wire, {"refused": [b"not text"]}),
        (ReplicateReply.from_wire, {"refused": ["x" * (SESSION_ID_CHARS + 1)]}),
        (lambda v: RowBatch.from_wire(v, NOW), {"rows": [row_to_wire(_ROW)] * 10_001}),
        (lambda v: RowBatch.from_wire(v, NOW, max_rows=1), {"rows": [row_to_wire(_ROW)] * 2}),
        (LookupRequest.from_wire, {"pubkey": ALICE.session_id, "namespace": 0, "hash": b"x"}),
        (RepairDigestRequest.from_wire, {"bucket": 0}),
        (RepairDigestReply.from_wire, {"digests": [repair.ZERO_DIGEST] * (repair.BUCKETS - 1)}),
        (RepairListRequest.from_wire, {"bucket": repair.BUCKETS, "offset": 0}),
        (RepairListRequest.from_wire, {"bucket": 0, "offset": 2**32 + 1}),
        (RepairListReply.from_wire, {"items": [list(_SUMMARY)], "more": 1}),
        (RepairListReply.from_wire, {"items": [[*_SUMMARY[:6], "yes"]], "more": False}),
        (KeysRequest.from_wire, {"keys": [list(_KEY)] * (LISTING_PAGE + 1)}),
        (KeysRequest.from_wire, {"keys": [[ALICE.session_id, MAX_NAMESPACE + 1, _ROW.hash]]}),
        (KeysRequest.from_wire, {"keys": [[ALICE.session_id, 0, _ROW.hash, 0]]}),
        (lambda v: HeldReply.from_wire(v, asked=3), {"held": 4}),
        (HeldReply.from_wire, {"held": True}),
    ],
)
def test_out_of_range_fields_are_refused_at_decode(
    decode: Callable[[object], Any], wire: object
) -> None:
    with pytest.raises(DecodeError):
        decode(wire)


def test_a_store_batch_reply_carries_each_store_s_refusal_in_order() -> None:
    """A refused store of a batch comes back as the :class:`RpcError` a ``store`` would
    have raised (its extra data kept), between the others' replies; a code the client
    does not know reads as ``internal``, as a whole reply's would."""
    wrong = RpcError("wrong_swarm", "elsewhere", {"swarm": 3})
    reply = StoreBatchReply((StoreReply(_ROW.hash, NOW), wrong, StoreReply(_ROW.hash, NOW + 1)))
    results = StoreBatchReply.from_wire(reply.to_wire(), stores=3).results
    assert results[0] == StoreReply(_ROW.hash, NOW) and results[2] == StoreReply(_ROW.hash, NOW + 1)
    assert isinstance(results[1], RpcError)
    assert (results[1].code, results[1].message, results[1].data) == (
        "wrong_swarm",
        "elsewhere",
        {"swarm": 3},
    )
    unknown = {"results": [{"error": {"code": "no_such_code", "message": "?"}}]}
    (read,) = StoreBatchReply.from_wire(unknown, stores=1).results
    assert isinstance(read, RpcError) and read.code == "internal"


def test_stores_are_cut_into_batches_by_count_and_bytes_in_order() -> None:
    """A batch holds at most ``MAX_STORE_BATCH`` stores and, unless it holds one store,
    ``MAX_STORE_BATCH_BYTES`` of data; a store larger than that goes alone."""
    sizes = [10] * (MAX_STORE_BATCH + 1) + [MAX_STORE_BATCH_BYTES // 2] * 3
    sizes += [MAX_STORE_BATCH_BYTES + 1, 1]
    stores = [store_request(data=bytes([i % 256]) * size) for i, size in enumerate(sizes)]
    batches = store_batches(stores)
    # 10 + half, then half + half (exactly the limit), the large one alone, then the last.
    assert [len(batch.stores) for batch in batches] == [MAX_STORE_BATCH, 2, 2, 1, 1]
    assert [s for batch in batches for s in batch.stores] == stores
    for batch in batches:
        assert StoreBatchRequest.from_wire(batch.to_wire()) == batch
    assert store_batches([]) == []


@pytest.mark.parametrize(
    ("params", "tokens"),
    [
        ({"stores": [{}] * 5}, 5),
        ({"stores": [{}] * 10_000}, MAX_STORE_BATCH),
        ({"stores": []}, 1),
        ({"stores": "many"}, 1),
        ({}, 1),
    ],
)
def test_a_store_batch_takes_a_token_per_store_and_no_more_than_the_limit(
    params: dict[str, Any], tokens: int
) -> None:
    assert store_batch_cost(params) == tokens


def test_bad_rows_of_a_batch_are_left_out_with_a_reason() -> None:
    bad = row_to_wire(_ROW)
    bad[2] = message_hash(b"something else")
    request = RowBatch.from_wire({"rows": [row_to_wire(_ROW), bad]}, NOW)
    assert request.rows == (_ROW,)
    assert [reason.startswith("row hash") for reason in request.refused] == [True]


def test_client_auth_round_trips_through_its_signer() -> None:
    signer = AuthSigner(ALICE)
    auth = signer.sign("retrieve", 0, NOW)
    assert signer.sign("retrieve", 0, NOW).timestamp_ms == auth.timestamp_ms + 1
    wire = auth.to_wire()
    assert ClientAuth.from_wire(Fields(wire, "auth")) == auth
