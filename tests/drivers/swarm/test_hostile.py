"""Hostile input against a service node: each refused with the right code, the node
keeps serving, and nothing stored is lost."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import cbor2
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay.link import MemoryNetwork
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.errors import RpcError
from p2psync.identity import Identity
from p2psync.network import open_local_network
from p2psync.rpc import ServerLimits, open_rpc, open_rpc_pool
from p2psync.swarm.access import DAY_MS, MailboxAccess, sign_access, vouched_reserve
from p2psync.swarm.allowance import charge_of
from p2psync.swarm.auth import AuthSigner, auth_text
from p2psync.swarm.client import SwarmClient
from p2psync.swarm.constants import MAX_DATA_BYTES, MAX_STORE_BATCH
from p2psync.swarm.messages import StoreBatchReply, StoreBatchRequest, StoreRequest
from p2psync.swarm.node_config import NodeConfig
from p2psync.wire import Fields, decode_frame, encode_cbor

from .helpers import open_test_swarm, swarm_of

ALICE = Identity.from_label("alice")
MALLORY = Identity.from_label("mallory")
NOW = TEST_EPOCH_MS


def store_params(**override: Any) -> dict[str, Any]:
    params = {
        "pubkey": ALICE.session_id,
        "namespace": 0,
        "ttl": 60_000,
        "timestamp": NOW,
        "data": b"x",
    }
    params.update(override)
    return params


def retrieve_params(signer: AuthSigner, **override: Any) -> dict[str, Any]:
    params = {
        "pubkey": ALICE.session_id,
        "namespace": 0,
        "last_hash": None,
        "auth": signer.auth("retrieve", 0, NOW),
    }
    params.update(override)
    return params


@pytest.mark.parametrize(
    ("method", "make_params", "code"),
    [
        ("store", lambda s: store_params(ttl=5), "bad_ttl"),
        ("store", lambda s: store_params(ttl=15 * 86_400_000), "bad_ttl"),
        ("store", lambda s: store_params(timestamp=NOW - 61_000), "clock_skew"),
        ("store", lambda s: store_params(data=b"x" * (MAX_DATA_BYTES + 1)), "too_large"),
        ("store", lambda s: store_params(namespace=-1), "bad_request"),
        ("store", lambda s: store_params(pubkey="05zz"), "bad_request"),
        ("store", lambda s: store_params(data="text"), "bad_request"),
        ("store", lambda s: store_params(extra=1), "bad_request"),
        ("store", lambda s: {"pubkey": ALICE.session_id}, "bad_request"),
        ("retrieve", lambda s: retrieve_params(s, auth={"ed25519": b"x"}), "bad_request"),
        (
            "retrieve",
            lambda s: retrieve_params(s, auth=AuthSigner(MALLORY).auth("retrieve", 0, NOW)),
            "unauthorized",
        ),
        (
            "retrieve",
            lambda s: retrieve_params(
                s,
                auth={
                    "ed25519": ALICE.ed25519_public,
                    "timestamp": NOW,
                    "signature": MALLORY.sign(auth_text("retrieve", ALICE.session_id, 0, NOW)),
                },
            ),
            "unauthorized",
        ),
        (
            "retrieve",
            lambda s: retrieve_params(s, auth=s.auth("retrieve", 0, NOW - 120_000)),
            "clock_skew",
        ),
        (
            "retrieve",
            lambda s: retrieve_params(s, auth=s.auth("retrieve", 1, NOW)),
            "unauthorized",
        ),
        (
            "delete",
            lambda s: {
                "pubkey": ALICE.session_id,
                "hashes": [b"\0" * 32],
                "auth": s.auth("delete", 0, NOW, [b"\1" * 32]),
            },
            "unauthorized",
        ),
        (
            "expire",
            lambda s: {
                "pubkey": ALICE.session_id,
                "hashes": [b"\0" * 32],
                "expiry": 2**63,
                "auth": s.auth("expire", 0, NOW, [b"\0" * 32], 2**63),
            },
            "bad_request",
        ),
        ("store", lambda s: store_params(ttl=2**64 - 1), "bad_request"),
        ("store", lambda s: store_params(timestamp=2**63), "bad_request"),
        ("replicate", lambda s: {"rows": []}, "bad_request"),
        (
            "replicate",
            lambda s: {
                "rows": [],
                "node_auth": {
                    "node": MALLORY.ed25519_public.hex(),
                    "timestamp": NOW,
                    "signature": b"\0" * 64,
                },
            },
            "unauthorized",
        ),
        ("nonexistent", lambda s: {}, "bad_request"),
    ],
)
async def test_bad_requests_get_stable_codes(
    autojump_clock: trio.testing.MockClock, method: str, make_params: Any, code: str
) -> None:
    async with open_local_network(6, relays=0, clock=Clock(TEST_EPOCH_MS)) as network:
        url = network.nodes[0].url
        signer = AuthSigner(ALICE)
        async with open_rpc(network.transport, url) as client:
            with pytest.raises(RpcError) as refused:
                await client.call(method, make_params(signer))
            assert refused.value.code == code
            result = await client.call("store", store_params(data=b"still serving"))
            assert len(result["hash"]) == 32


async def test_replayed_auth_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with open_local_network(6, relays=0, clock=Clock(TEST_EPOCH_MS)) as network:
        params = retrieve_params(AuthSigner(ALICE))
        async with open_rpc(network.transport, network.nodes[0].url) as client:
            await client.call("retrieve", params)
            with pytest.raises(RpcError) as refused:
                await client.call("retrieve", params)
            assert refused.value.code == "unauthorized"


async def test_wrong_swarm_names_the_right_nodes(autojump_clock: trio.testing.MockClock) -> None:
    async with open_local_network(12, relays=0, clock=Clock(TEST_EPOCH_MS)) as network:
        nodes = network.running_nodes()
        right = nodes[0].swarms.swarm_for_key(ALICE.x25519_public)
        outsider = next(n for n in nodes if n.swarm_id != right)
        async with open_rpc(network.transport, outsider.url) as client:
            with pytest.raises(RpcError) as refused:
                await client.call("store", store_params())
        assert refused.value.code == "wrong_swarm"
        assert refused.value.data["swarm"] == right
        members = {n.pubkey for n in nodes if n.swarm_id == right}
        assert {n["pubkey"] for n in refused.value.data["nodes"]} == members


async def test_a_batch_with_an_owner_of_another_swarm_is_refused_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One foreign owner refuses the whole ``store_batch`` ``wrong_swarm`` (naming that
    owner's swarm), so a client sends it where it belongs; nothing of it is stored."""
    async with open_local_network(12, relays=0, clock=Clock(TEST_EPOCH_MS)) as network:
        nodes = network.running_nodes()
        alices = nodes[0].swarms.swarm_for_key(ALICE.x25519_public)
        member = next(n for n in nodes if n.swarm_id == alices)
        stranger = next(
            who
            for label in range(1000)
            if nodes[0].swarms.swarm_for_key((who := Identity.from_label(str(label))).x25519_public)
            != alices
        )
        stores = [store_params(data=b"mine"), store_params(pubkey=stranger.session_id)]
        async with open_rpc(network.transport, member.url) as client:
            with pytest.raises(RpcError) as refused:
                await client.call("store_batch", {"stores": stores})
        assert refused.value.code == "wrong_swarm"
        assert refused.value.data["swarm"] != alices
        assert all(node.store.stats()[0] == 0 for node in nodes)


async def test_a_batch_takes_a_token_per_store_from_its_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a burst of 10 requests, a batch of 8 stores goes through and the next batch
    of 8 is refused ``rate_limited`` whole, as the eight stores one by one would be."""
    limits = ServerLimits(requests_per_s=0.001, request_burst=10)
    config = NodeConfig(limits=limits)
    async with open_local_network(
        6, relays=0, clock=Clock(TEST_EPOCH_MS), node_config=config
    ) as network:
        member = next(
            n
            for n in network.running_nodes()
            if n.swarms.swarm_for_key(ALICE.x25519_public) == n.swarm_id
        )
        batch = {"stores": [store_params(data=bytes([i])) for i in range(8)]}
        async with open_rpc(network.transport, member.url) as client:
            assert len((await client.call("store_batch", batch))["results"]) == 8
            with pytest.raises(RpcError) as refused:
                await client.call("store_batch", batch)
        assert refused.value.code == "rate_limited"


def _frames() -> st.SearchStrategy[bytes]:
    leaves = (
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.binary(max_size=40)
        | st.text(max_size=20)
    )
    values = st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )
    methods = st.sampled_from(
        [
            "store",
            "retrieve",
            "delete",
            "expire",
            "subscribe",
            "info",
            "get_swarm",
            "replicate",
            "lookup",
            "repair_list",
            "repair_fetch",
        ]
    )
    requests = st.builds(
        lambda rid, method, params: cbor2.dumps({"id": rid, "method": method, "params": params}),
        st.integers(0, 2**64 - 1),
        methods,
        st.dictionaries(
            st.sampled_from(
                [
                    "pubkey",
                    "namespace",
                    "ttl",
                    "timestamp",
                    "data",
                    "last_hash",
                    "auth",
                    "hashes",
                    "expiry",
                    "rows",
                    "keys",
                    "bucket",
                    "offset",
                    "node_auth",
                    "hash",
                    "limit",
                ]
            ),
            values,
            max_size=6,
        ),
    )
    return requests | st.binary(max_size=64) | values.map(cbor2.dumps)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(_frames(), min_size=1, max_size=10))
def test_generated_frames_never_break_a_node(frames: list[bytes]) -> None:
    """Whatever arrives, each frame gets a reply or an error, and a stored message
    stays retrievable afterwards."""

    async def scenario() -> None:
        network = MemoryNetwork()
        async with open_local_network(
            1, relays=0, transport=network, clock=Clock(TEST_EPOCH_MS)
        ) as local:
            url = local.nodes[0].url
            async with open_rpc(network, url) as client:
                stored = await client.call("store", store_params(data=b"keep me"))
            async with network.connect(url) as link:
                for frame in frames:
                    await link.send(frame)
                    decode_frame(await link.receive())
            async with open_rpc(network, url) as client:
                found = await client.call("retrieve", retrieve_params(AuthSigner(ALICE)))
                assert stored["hash"] in [m["hash"] for m in found["messages"]]
                assert local.nodes[0].node is not None
                assert local.nodes[0].node.rpc.stats.errors.get("internal", 0) == 0

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_garbage_over_a_real_websocket() -> None:
    # Real sockets run on real time: virtual time could jump past a handshake timeout.
    async with open_local_network(
        1, relays=0, transport="tcp", clock=Clock(TEST_EPOCH_MS)
    ) as network:
        url = network.nodes[0].url
        async with network.transport.connect(url) as link:
            for frame in (b"\x9f", encode_cbor({"id": 1}), b"\xa1\x61x" + b"\xff" * 8):
                await link.send(frame)
                reply = decode_frame(await link.receive())
                assert reply.code == "bad_request"  # type: ignore[union-attr]
        async with open_rpc(network.transport, url) as client:
            assert (await client.call("info", {}))["node"] == network.nodes[
                0
            ].identity.ed25519_public.hex()


async def test_subscriptions_per_connection_are_capped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One connection cannot make a node fan pushes out to thousands of keys for it: past
    the cap it is refused ``rate_limited``; its slots are freed when it closes."""
    cap = NodeConfig().max_subscriptions_per_connection
    owners = [AuthSigner(Identity.from_label(f"subscriber-{i}")) for i in range(cap + 1)]

    def subscribe_params(owner: AuthSigner) -> dict[str, Any]:
        return {
            "pubkey": owner.identity.session_id,
            "namespace": 0,
            "auth": owner.auth("subscribe", 0, NOW),
        }

    async with open_local_network(6, relays=0, clock=Clock(TEST_EPOCH_MS)) as network:
        url = network.nodes[0].url
        async with open_rpc(network.transport, url) as client:
            for owner in owners[:cap]:
                assert await client.call("subscribe", subscribe_params(owner)) == {}
            with pytest.raises(RpcError) as refused:
                await client.call("subscribe", subscribe_params(owners[cap]))
            assert refused.value.code == "rate_limited"
        async with open_rpc(network.transport, url) as client:
            assert await client.call("subscribe", subscribe_params(owners[cap])) == {}


async def test_a_connection_storing_too_fast_is_slowed_and_others_are_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``store`` needs no account, so each connection has a byte budget (here 10 kB/s,
    bursts of 80 kB): past it, ``rate_limited``; it refills with time, and other
    connections keep theirs."""
    config = NodeConfig(store_bytes_per_s=10_000)
    big = b"x" * 30_000
    async with open_local_network(
        6, relays=0, clock=Clock(TEST_EPOCH_MS), node_config=config
    ) as network:
        url = network.nodes[0].url
        clock = network.clock
        async with open_rpc(network.transport, url) as greedy:
            for i in range(2):
                await greedy.call(
                    "store", store_params(data=big + bytes([i]), timestamp=clock.now_ms())
                )
            with pytest.raises(RpcError) as refused:
                await greedy.call("store", store_params(data=big + b"2", timestamp=clock.now_ms()))
            assert refused.value.code == "rate_limited"
            async with open_rpc(network.transport, url) as other:
                await other.call("store", store_params(data=big + b"o", timestamp=clock.now_ms()))
            await trio.sleep(3)
            await greedy.call("store", store_params(data=big + b"3", timestamp=clock.now_ms()))


async def test_an_owners_mailbox_is_bounded_and_refuses_rather_than_drops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """However many connections store for one key, its live data on a node stays within
    the quota: the store past it is ``rate_limited`` (not a refusal for good: senders
    keep their copies and ask later) and what was stored stays, and a retry of it is
    answered; another owner is served; once messages expire there is room again. (Every
    store here shows the owner's access, so the whole quota is open to it.)"""
    config = NodeConfig(owner_quota_bytes=200_000)
    big = b"y" * 60_000
    access = sign_access(ALICE, TEST_EPOCH_MS).to_wire()
    async with open_local_network(
        6, relays=0, clock=Clock(TEST_EPOCH_MS), node_config=config
    ) as network:
        clock = network.clock
        stored = []
        for i in range(3):
            async with open_rpc(network.transport, network.nodes[0].url) as client:
                params = store_params(
                    data=big + bytes([i]), ttl=20_000, timestamp=clock.now_ms(), access=access
                )
                stored.append((await client.call("store", params))["hash"])
        async with open_rpc(network.transport, network.nodes[0].url) as client:
            with pytest.raises(RpcError) as refused:
                await client.call(
                    "store", store_params(data=big + b"4", timestamp=clock.now_ms(), access=access)
                )
            assert (
                refused.value.code == "rate_limited" and "mailbox is full" in refused.value.message
            )
            # A retry of a message held already takes no room: it is answered.
            again = store_params(data=big + bytes([0]), ttl=20_000, timestamp=clock.now_ms())
            assert (await client.call("store", again))["hash"] == stored[0]
            other = store_params(pubkey=MALLORY.session_id, data=big, timestamp=clock.now_ms())
            await client.call("store", other)
            node = network.nodes[0].node
            assert node is not None
            assert all(node.store.get(ALICE.session_id, 0, digest) for digest in stored)
            await trio.sleep(30)
            await client.call("store", store_params(data=big + b"5", timestamp=clock.now_ms()))


async def test_a_stranger_fills_an_owners_mailbox_only_up_to_the_reserve_of_her_contacts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A store without the owner's access stops a quarter short of the quota (finding 32:
    one stranger kept a mailbox full, and every friend's mail waited); one showing it
    fills the rest. An expired access counts as none, and one the owner did not sign is
    refused ``unauthorized``."""
    config = NodeConfig(owner_quota_bytes=200_000)  # a reserve of 50 000 bytes
    big = b"z" * 60_000
    access = sign_access(ALICE, TEST_EPOCH_MS)
    async with open_local_network(
        6, relays=0, clock=Clock(TEST_EPOCH_MS), node_config=config
    ) as network:
        clock = network.clock
        async with open_rpc(network.transport, network.nodes[0].url) as client:

            async def store(tag: bytes, shown: MailboxAccess | None) -> None:
                params = store_params(data=big + tag, ttl=600_000, timestamp=clock.now_ms())
                await client.call(
                    "store", params | ({} if shown is None else {"access": shown.to_wire()})
                )

            for tag in (b"1", b"2"):  # 120 512 of the 150 000 a stranger may fill
                await store(tag, None)
            with pytest.raises(
                RpcError, match=r"mailbox is full \(150000 bytes\) to stores without its access"
            ):
                await store(b"3", None)
            forged = replace(sign_access(MALLORY, TEST_EPOCH_MS), ed25519=ALICE.ed25519_public)
            with pytest.raises(RpcError) as refused:
                await store(b"3", forged)
            assert refused.value.code == "unauthorized"
            for _ in range(10):  # a retry of a held row is answered and counted no more
                await store(b"1", None)
            await store(b"3", access)  # a friend's: the reserve is hers
            with pytest.raises(RpcError, match=r"mailbox is full \(200000 bytes\): later"):
                await store(b"4", access)
            expired = sign_access(ALICE, TEST_EPOCH_MS - 40 * DAY_MS)
            with pytest.raises(RpcError, match="without its access"):
                await store(b"4", expired)


async def test_a_stranger_storing_at_every_member_at_once_leaves_the_reserve_on_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Four connections at each member of Alice's swarm store junk for her in batches
    until refused: each member takes a stranger's stores only to three quarters of the
    quota, and the rows its peers replicate to it are held to the same mark (a review's
    took them to the full quota, and batches read in one turn past it, 1.49 times, so
    every friend's store was refused); a friend's store is then taken at every member,
    and its row reaches every member's reserve."""
    quota = 1_000_000
    config = NodeConfig(owner_quota_bytes=quota)
    async with open_local_network(
        6, relays=0, clock=Clock(TEST_EPOCH_MS), node_config=config
    ) as network:
        clock = network.clock
        members = swarm_of(network, ALICE)
        tags = iter(range(10**6))

        async def flood(url: str) -> None:
            async with open_rpc(network.transport, url) as client:
                while True:
                    stores = [
                        store_params(
                            data=next(tags).to_bytes(8, "big") + bytes(1_192),
                            ttl=3_600_000,
                            timestamp=clock.now_ms(),
                        )
                        for _ in range(64)
                    ]
                    reply = await client.call("store_batch", {"stores": stores})
                    if any("error" in result for result in reply["results"]):
                        return

        async with trio.open_nursery() as nursery:
            for member in members:
                for _ in range(4):
                    nursery.start_soon(flood, member.url)
        await trio.sleep(30)  # replication settles

        def held(member: Any) -> int:
            rows = member.store.records(clock.now_ms(), [ALICE.session_id])
            return sum(charge_of(row) for row in rows)

        assert all(quota // 2 < held(m) <= quota - vouched_reserve(quota) for m in members)
        access = sign_access(ALICE, clock.now_ms()).to_wire()
        for n, member in enumerate(members):
            async with open_rpc(network.transport, member.url) as client:
                params = store_params(data=b"mail %d" % n, timestamp=clock.now_ms())
                await client.call("store", {**params, "access": access})
        await trio.sleep(30)
        assert all(held(m) > quota - vouched_reserve(quota) for m in members)


def _refusing(code: str, asked: list[str], name: str) -> Any:
    def refuse(params: Fields, connection: object) -> None:
        asked.append(name)
        raise RpcError(code, "so it says")

    return refuse


async def test_a_refusal_for_good_is_one_members_word_until_a_second_says_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A caller drops what was refused for good, so one member's word is not taken: with
    the other members out of reach the store is ``unavailable`` (asked again later), a
    second member saying it too makes it so, and in a swarm of one its one member's
    word stands."""
    async with open_test_swarm(6) as (network, swarm):
        hostile, *others = swarm_of(network, ALICE)
        asked: list[str] = []
        hostile.rpc.methods["store"] = _refusing("bad_request", asked, hostile.url)
        for node in others:
            node.rpc.methods["store"] = _refusing("unavailable", asked, node.url)
        with pytest.raises(RpcError) as alone:
            await swarm.store(ALICE.session_id, 0, b"hello")
        assert alone.value.code == "unavailable" and "one member refused" in alone.value.message
        assert sorted(asked) == sorted(node.url for node in (hostile, *others))

        asked.clear()
        for node in others:
            node.rpc.methods["store"] = _refusing("bad_request", asked, node.url)
        with pytest.raises(RpcError) as confirmed:
            await swarm.store(ALICE.session_id, 0, b"hello")
        assert confirmed.value.code == "bad_request" and len(asked) == 2

    async with open_test_swarm(1) as (network, swarm):
        (only,) = swarm_of(network, ALICE)
        asked.clear()
        only.rpc.methods["store"] = _refusing("bad_request", asked, only.url)
        with pytest.raises(RpcError) as one_of_one:
            await swarm.store(ALICE.session_id, 0, b"hello")
        assert one_of_one.value.code == "bad_request" and asked == [only.url]


class _InRingOrder(random.Random):
    """Members are asked in the swarm's own order, the same each time it is read."""

    def shuffle(self, x: Any) -> None:
        pass


async def test_a_member_asked_again_after_a_redirect_is_still_one_word(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Redirects (``wrong_swarm``) read the swarm again and list the member that refused
    already: asking it again does not make its refusal a second member's. Members are
    asked in ring order, the liar first, so it is listed again after each redirect."""
    async with open_test_swarm(6) as (network, _), open_rpc_pool(network.transport) as pool:
        swarm = SwarmClient(pool, network.directory(), network.clock, _InRingOrder())
        first, *others = await swarm.swarm_nodes(ALICE.session_id)
        asked: list[str] = []
        for node in network.running_nodes():
            says = "bad_request" if node.url == first.url else "wrong_swarm"
            node.rpc.methods["store"] = _refusing(says, asked, node.url)
        with pytest.raises(RpcError) as failed:
            await swarm.store(ALICE.session_id, 0, b"hello")
        assert failed.value.code == "wrong_swarm"
        assert asked == [first.url, others[0].url, others[0].url, others[0].url]


async def test_stores_of_a_batch_refused_for_good_are_asked_of_a_second_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The stores of a batch the member asked refused for good go to another member in
    a batch of their own, whose answer stands: stored there, or refused by it too."""
    async with open_test_swarm(6) as (network, swarm):
        members = swarm_of(network, ALICE)
        batches: list[int] = []
        honest = {node.url: node.rpc.methods["store_batch"] for node in members}

        def lie_first(url: str) -> Any:
            def store_batch(params: Fields, connection: Any) -> Any:
                stores = params.items("stores", max_len=MAX_STORE_BATCH)
                batches.append(len(stores))
                if len(batches) == 1:  # whichever member is asked first lies
                    return StoreBatchReply.wire([RpcError("bad_ttl", "so it says")] * len(stores))
                return honest[url](params, connection)  # a reply, or one to come

            return store_batch

        for node in members:
            node.rpc.methods["store_batch"] = lie_first(node.url)
        results = await swarm.store_batch(_batch(3))
        assert batches == [3, 3]
        assert all(isinstance(result, tuple) for result in results)

        batches.clear()
        for node in members:
            node.rpc.methods["store_batch"] = _refusing_each("bad_ttl", batches)
        results = await swarm.store_batch(_batch(3))
        assert batches == [3, 3]
        assert all(isinstance(r, RpcError) and r.code == "bad_ttl" for r in results)


def _batch(count: int) -> StoreBatchRequest:
    return StoreBatchRequest(
        tuple(
            StoreRequest(ALICE.session_id, 0, 3_600_000, TEST_EPOCH_MS, bytes([i]))
            for i in range(count)
        )
    )


def _refusing_each(code: str, batches: list[int]) -> Any:
    def refuse_each(params: Fields, connection: object) -> dict[str, Any]:
        stores = params.items("stores", max_len=MAX_STORE_BATCH)
        batches.append(len(stores))
        return StoreBatchReply.wire([RpcError(code, "so it says")] * len(stores))

    return refuse_each
