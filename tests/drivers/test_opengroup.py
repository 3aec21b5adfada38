"""Open groups: one user per person whichever device posts, and forgeries refused."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.link import MemoryNetwork, Transport
from p2psync.cli import main
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.envelope import MAX_TIMESTAMP_MS
from p2psync.errors import DecodeError, RpcError
from p2psync.fileserver.client import FileServerClient, open_fileserver_client
from p2psync.fileserver.server import FileServer
from p2psync.identity import Identity
from p2psync.mapping import create_mapping, revoke_pairing
from p2psync.opengroup import server as server_module
from p2psync.opengroup.client import OpenGroupClient, open_opengroup_client
from p2psync.opengroup.posts import (
    MAX_MESSAGES_REPLY_BYTES,
    MAX_POST_BODY_BYTES,
    POSTS_PER_KEY,
    ROOM_KEY_REFILL_S,
    ROOM_POST_REFILL_S,
    ROOM_POSTS_BURST,
    ROOM_REFILL_S,
    ROOMS_BURST,
    ROOMS_PER_KEY,
    Post,
    RoomMessage,
    sign_post,
    sign_room_request,
)
from p2psync.opengroup.server import OpenGroupServer
from p2psync.opengroup.store import OpenGroupStore, post_size
from p2psync.services import OPENGROUP_FILE
from p2psync.websocket import WebSocketTransport
from p2psync.wire import MAX_FRAME_BYTES, Reply, encode_cbor, encode_frame

PRIMARY = Identity.from_label("opengroup/primary")
SECONDARY = Identity.from_label("opengroup/secondary")
LONER = Identity.from_label("opengroup/loner")
SHARED = Identity.from_label("opengroup/shared-linked-key")


@dataclass
class Servers:
    clock: Clock
    transport: Transport
    files: FileServerClient
    chat: OpenGroupClient
    chat_server: OpenGroupServer
    nursery: trio.Nursery


def _address(transport: Transport, name: str) -> str:
    return f"mem:{name}" if isinstance(transport, MemoryNetwork) else "127.0.0.1:0"


@asynccontextmanager
async def running(
    clock: Clock,
    *,
    mapped: bool = True,
    db_path: Path | str = ":memory:",
    transport: Transport | None = None,
) -> AsyncIterator[Servers]:
    transport = transport or MemoryNetwork()
    async with trio.open_nursery() as nursery:
        files_url = await nursery.start(
            FileServer(":memory:", clock).serve, transport, _address(transport, "files")
        )
        chat_server = OpenGroupServer(db_path, clock, files_url if mapped else None, transport)
        chat_url = await nursery.start(chat_server.serve, transport, _address(transport, "chat"))
        async with (
            open_fileserver_client(transport, files_url) as files,
            open_opengroup_client(transport, chat_url) as chat,
        ):
            yield Servers(clock, transport, files, chat, chat_server, nursery)
        nursery.cancel_scope.cancel()


async def create_room(s: Servers, room: str, creator: Identity = LONER) -> bool:
    return await s.chat.create_room(sign_room_request(creator, room, s.clock.now_ms()))


async def refused(code: str, call: Awaitable[Any]) -> RpcError:
    with pytest.raises(RpcError) as info:
        await call
    assert info.value.code == code, info.value.message
    return info.value


async def test_mapped_mode_attributes_every_device_to_its_primary(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with running(clock) as s:
        assert s.chat_server.mode == "mapped"
        assert await create_room(s, "lobby") is True
        assert await create_room(s, "lobby") is False
        assert await s.chat.list_rooms() == ["lobby"]
        await s.files.put_mapping(create_mapping(PRIMARY, SECONDARY, clock.now_ms()))

        now = clock.now_ms()
        posts = [
            sign_post(PRIMARY, "lobby", b"from the phone", now),
            sign_post(SECONDARY, "lobby", b"from the desktop", now, primary=PRIMARY.session_id),
            sign_post(SECONDARY, "lobby", b"no claim", now + 1),
            sign_post(LONER, "lobby", b"single device", now),
        ]
        receipts = [await s.chat.post(p) for p in posts]
        assert [r.user for r in receipts] == [PRIMARY.session_id] * 3 + [LONER.session_id]
        assert receipts == sorted(receipts, key=lambda r: r.id)
        # A retried post is the same post.
        assert await s.chat.post(posts[1]) == receipts[1]

        messages, more = await s.chat.messages("lobby")
        assert not more
        assert [(m.id, m.user, m.device, m.body) for m in messages] == [
            (r.id, r.user, p.sender, p.body) for r, p in zip(receipts, posts, strict=True)
        ]
        assert messages[1].device == SECONDARY.session_id and messages[1].timestamp_ms == now
        page, more = await s.chat.messages("lobby", since=receipts[0].id, limit=2)
        assert more and [m.id for m in page] == [receipts[1].id, receipts[2].id]
        assert [m.claimed for m in messages] == [True, True, False, True]


async def test_readers_drop_what_a_server_invented_or_altered(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A malicious server edits a body, moves a post to another user, and invents a post
    with a signature it copied: every reader checks messages against their signed posts,
    drops those three with a warning, and still reads the honest ones."""
    clock = Clock(TEST_EPOCH_MS)
    db_path = tmp_path / "chat.db"
    async with running(clock, db_path=db_path) as s:
        await create_room(s, "lobby")
        await s.files.put_mapping(create_mapping(PRIMARY, SECONDARY, clock.now_ms()))
        now = clock.now_ms()
        honest = sign_post(LONER, "lobby", b"honest", now)
        edited = sign_post(LONER, "lobby", b"pay bob", now + 1)
        moved = sign_post(SECONDARY, "lobby", b"mine", now + 2, primary=PRIMARY.session_id)
        for post in (honest, edited, moved):
            await s.chat.post(post)
        db = sqlite3.connect(db_path, isolation_level=None)  # the server's disk, edited
        db.execute("UPDATE posts SET body = ? WHERE body = ?", (b"pay mallory", b"pay bob"))
        db.execute("UPDATE posts SET user = ? WHERE body = ?", (LONER.session_id, b"mine"))
        db.execute(
            "INSERT INTO posts (room, user, device, timestamp, body, hash, received, post)"
            " VALUES ('lobby', ?, ?, ?, ?, ?, ?, ?)",
            (
                PRIMARY.session_id,
                PRIMARY.session_id,
                now,
                b"invented",
                bytes(32),
                now,
                replace(honest, sender=PRIMARY.session_id, body=b"invented").to_bytes(),
            ),
        )
        db.close()
        messages, _ = await s.chat.messages("lobby")
        assert [m.body for m in messages] == [b"honest"]


async def test_linked_mode_shared_key_is_the_user(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with running(clock, mapped=False) as s:
        assert s.chat_server.mode == "linked"
        await create_room(s, "lobby")
        phone = await s.chat.post(sign_post(SHARED, "lobby", b"phone", clock.now_ms()))
        desktop = await s.chat.post(sign_post(SHARED, "lobby", b"desktop", clock.now_ms() + 1))
        assert phone.user == desktop.user == SHARED.session_id
        assert phone.id != desktop.id
        claimed = sign_post(SHARED, "lobby", b"x", clock.now_ms(), primary=PRIMARY.session_id)
        await refused("unauthorized", s.chat.post(claimed))


async def test_forged_posts_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with running(clock) as s:
        await create_room(s, "lobby")
        await create_room(s, "other")
        await s.files.put_mapping(create_mapping(PRIMARY, SECONDARY, clock.now_ms()))
        now = clock.now_ms()

        # An unmapped key claiming a primary.
        error = await refused(
            "unauthorized",
            s.chat.post(sign_post(LONER, "lobby", b"hi", now, primary=PRIMARY.session_id)),
        )
        assert "claimed primary" in error.message
        # A tampered body.
        genuine = sign_post(SECONDARY, "lobby", b"pay alice", now)
        await refused("unauthorized", s.chat.post(replace(genuine, body=b"pay mallory")))
        # A key that is not the sender's (LONER signs, claims to be SECONDARY).
        unsigned = replace(sign_post(LONER, "lobby", b"hi", now), sender=SECONDARY.session_id)
        impostor = replace(unsigned, sig=LONER.sign(unsigned.signed_bytes()))
        error = await refused("unauthorized", s.chat.post(impostor))
        assert "does not belong" in error.message
        # Moved to another room.
        await refused(
            "bad_request", s.chat.rpc.call("post", {"room": "other", "post": genuine.to_bytes()})
        )
        # Unknown room, stale or future timestamp, oversize body.
        await refused("not_found", s.chat.post(sign_post(LONER, "nowhere", b"hi", now)))
        await refused("clock_skew", s.chat.post(sign_post(LONER, "lobby", b"hi", now - 61_000)))
        await refused("clock_skew", s.chat.post(sign_post(LONER, "lobby", b"hi", now + 61_000)))
        with pytest.raises(ValueError):
            sign_post(LONER, "lobby", bytes(MAX_POST_BODY_BYTES + 1), now)
        big = replace(sign_post(LONER, "lobby", b"", now), body=bytes(MAX_POST_BODY_BYTES + 2000))
        await refused("too_large", s.chat.post(replace(big, sig=LONER.sign(big.signed_bytes()))))

        assert (await s.chat.messages("lobby"))[0] == []
        assert "internal" not in s.chat_server.rpc.stats.errors


async def test_revoked_device_is_on_its_own(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with running(clock) as s:
        await create_room(s, "lobby")
        await s.files.put_mapping(create_mapping(PRIMARY, SECONDARY, clock.now_ms()))
        before = await s.chat.post(
            sign_post(SECONDARY, "lobby", b"paired", clock.now_ms(), primary=PRIMARY.session_id)
        )
        await trio.sleep(1)
        await s.files.revoke_mapping(revoke_pairing(PRIMARY, SECONDARY.session_id, clock.now_ms()))
        await refused(
            "unauthorized",
            s.chat.post(
                sign_post(SECONDARY, "lobby", b"x", clock.now_ms(), primary=PRIMARY.session_id)
            ),
        )
        after = await s.chat.post(sign_post(SECONDARY, "lobby", b"alone", clock.now_ms()))
        assert before.user == PRIMARY.session_id and after.user == SECONDARY.session_id
        # History keeps the attribution it had when posted.
        assert [m.user for m in (await s.chat.messages("lobby"))[0]] == [
            PRIMARY.session_id,
            SECONDARY.session_id,
        ]


async def test_file_server_down_means_unavailable_then_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = Clock(TEST_EPOCH_MS)
    network = MemoryNetwork()
    async with running(clock, transport=network) as s:
        await create_room(s, "lobby")
        await s.chat.post(sign_post(LONER, "lobby", b"up", clock.now_ms()))
        network.set_down("mem:files")
        await refused("unavailable", s.chat.post(sign_post(LONER, "lobby", b"?", clock.now_ms())))
        await refused("unavailable", s.chat.post(sign_post(LONER, "lobby", b"?", clock.now_ms())))
        network.set_down("mem:files", down=False)
        receipt = await s.chat.post(sign_post(LONER, "lobby", b"!", clock.now_ms()))
        assert receipt.user == LONER.session_id


async def test_restart_keeps_rooms_and_posts(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    clock = Clock(TEST_EPOCH_MS)
    db = tmp_path / "chat.sqlite3"
    async with running(clock, db_path=db) as s:
        await create_room(s, "lobby")
        first = await s.chat.post(sign_post(LONER, "lobby", b"before", clock.now_ms()))
    await trio.sleep(5)
    async with running(clock, db_path=db) as s:
        assert await s.chat.list_rooms() == ["lobby"]
        second = await s.chat.post(sign_post(LONER, "lobby", b"after", clock.now_ms()))
        assert second.id > first.id
        messages, _ = await s.chat.messages("lobby")
        assert [m.body for m in messages] == [b"before", b"after"]


async def test_the_operator_removes_a_room_while_the_server_runs(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``p2psync opengroup --remove-room``: the room and its posts go from the file the
    running server uses, which answers from its next request as if the room had never
    been (and may hold a new room in its place); other rooms are as they were; a room
    or a folder with no open group is a one-line error."""
    clock = Clock(TEST_EPOCH_MS)
    async with running(clock, db_path=tmp_path / OPENGROUP_FILE) as s:
        for room in ("lobby", "quiet"):
            await create_room(s, room)
            await s.chat.post(sign_post(LONER, room, f"in {room}".encode(), clock.now_ms()))
        await s.chat.post(sign_post(LONER, "lobby", b"again", clock.now_ms()))
        assert main(["opengroup", "--data", str(tmp_path), "--remove-room", "lobby"]) == 0
        assert capsys.readouterr().out == "removed room lobby and its 2 posts\n"
        assert await s.chat.list_rooms() == ["quiet"]
        await refused("not_found", s.chat.messages("lobby"))
        await refused("not_found", s.chat.post(sign_post(LONER, "lobby", b"x", clock.now_ms())))
        assert [m.body for m in (await s.chat.messages("quiet"))[0]] == [b"in quiet"]
        await trio.sleep(ROOM_KEY_REFILL_S)
        assert await create_room(s, "lobby")
        assert (await s.chat.messages("lobby"))[0] == []
    for data, room in ((tmp_path, "hall"), (tmp_path / "elsewhere", "lobby")):
        assert main(["opengroup", "--data", str(data), "--remove-room", room]) == 1
        [line] = capsys.readouterr().err.splitlines()
        assert "no room 'hall'" in line if room == "hall" else "no open group in" in line


def test_a_removed_room_makes_room_for_another_on_a_full_server(tmp_path: Path) -> None:
    store = OpenGroupStore(tmp_path / "chat.sqlite3", max_rooms=1)
    assert store.create_room("lobby", TEST_EPOCH_MS)
    with pytest.raises(RpcError, match="its limit of 1 rooms"):
        store.create_room("hall", TEST_EPOCH_MS)
    assert store.remove_room("lobby") == 0
    assert store.remove_room("lobby") is None
    assert store.create_room("hall", TEST_EPOCH_MS)
    store.close()


async def test_over_websocket(tmp_path: Path) -> None:
    clock = Clock()
    async with running(
        clock, transport=WebSocketTransport(plain=True), db_path=tmp_path / "c.db"
    ) as s:
        await create_room(s, "lobby")
        await s.files.put_mapping(create_mapping(PRIMARY, SECONDARY, clock.now_ms()))
        receipt = await s.chat.post(
            sign_post(SECONDARY, "lobby", b"hi", clock.now_ms(), primary=PRIMARY.session_id)
        )
        assert receipt.user == PRIMARY.session_id
        assert [m.device for m in (await s.chat.messages("lobby"))[0]] == [SECONDARY.session_id]


@pytest.mark.parametrize("huge", [MAX_TIMESTAMP_MS + 1, 2**63, 2**64 - 1])
async def test_integers_out_of_range_are_bad_requests(
    autojump_clock: trio.testing.MockClock, huge: int
) -> None:
    """No integer of a request reaches SQLite out of its range: each is refused when it is
    decoded (``since`` of 2**63 once answered ``internal``, with a traceback, to anyone);
    times past year 9999 too."""
    clock = Clock(TEST_EPOCH_MS)
    async with running(clock) as s:
        await create_room(s, "lobby")
        if huge > 2**63 - 1:
            since = {"room": "lobby", "since": huge}
            await refused("bad_request", s.chat.rpc.call("messages", since))
        dated = sign_post(LONER, "lobby", b"from the far future", huge)
        await refused("bad_request", s.chat.post(dated))
        await refused("bad_request", s.chat.create_room(sign_room_request(LONER, "late", huge)))
        assert "internal" not in s.chat_server.rpc.stats.errors
        assert (await s.chat.messages("lobby", since=2**63 - 1))[0] == []


async def test_a_server_that_lists_its_room_creators_takes_rooms_from_them_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Keys are free, so on an open server a stranger can spend the rationed allowance for
    good (a review's: 999 of 1 000 rooms in 3.5 days, then none for anyone). A server
    that lists its creators takes new rooms from their keys alone; asking for a room that
    exists stays anyone's, and costs nothing."""
    clock = Clock(TEST_EPOCH_MS)
    transport = MemoryNetwork()
    server = OpenGroupServer(
        ":memory:", clock, None, transport, room_creators=[LONER.session_id, SHARED.session_id]
    )
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve, transport, "mem:chat")
        async with open_opengroup_client(transport, url) as chat:

            async def ask(room: str, creator: Identity) -> bool:
                return await chat.create_room(sign_room_request(creator, room, clock.now_ms()))

            assert await ask("lobby", LONER) is True
            for n in range(ROOMS_BURST + 1):
                stranger = Identity.from_label(f"opengroup/stranger-{n}")
                await refused("unauthorized", ask(f"junk-{n}", stranger))
            assert await ask("lobby", PRIMARY) is False
            assert await ask("news", SHARED) is True
            assert set(await chat.list_rooms()) == {"lobby", "news"}
        nursery.cancel_scope.cancel()


async def test_room_creation_is_rationed_per_key_and_in_total(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with running(clock, mapped=False) as s:
        for n in range(ROOMS_PER_KEY):
            assert await create_room(s, f"junk-{n}", LONER) is True
        await refused("rate_limited", create_room(s, "one-more", LONER))
        assert await create_room(s, "junk-0", LONER) is False  # asking again costs nothing
        # Another key still creates a room; nobody can spend LONER's allowance for it.
        assert await create_room(s, "mine", PRIMARY) is True
        forged = replace(
            sign_room_request(PRIMARY, "forged", clock.now_ms()), key=LONER.ed25519_public
        )
        await refused("unauthorized", s.chat.create_room(forged))
        stale = sign_room_request(SECONDARY, "stale", clock.now_ms() - 61_000)
        await refused("clock_skew", s.chat.create_room(stale))
        # All keys together: fresh keys stop at the total, then get one room per refill.
        created = ROOMS_PER_KEY + 1
        keys = (Identity.from_label(f"opengroup/sybil-{n}") for n in range(ROOMS_BURST + 1))
        for n, key in enumerate(keys):
            if created < ROOMS_BURST:
                assert await create_room(s, f"sybil-{n}", key) is True
                created += 1
            else:
                await refused("rate_limited", create_room(s, f"sybil-{n}", key))
        await trio.sleep(ROOM_REFILL_S)
        assert await create_room(s, "after-a-while", SHARED) is True
        await refused("rate_limited", create_room(s, "and-another", SECONDARY))
        # LONER's own allowance came back with time too.
        await trio.sleep(ROOM_KEY_REFILL_S)
        assert await create_room(s, "one-more", LONER) is True
        assert len(await s.chat.list_rooms()) == ROOMS_BURST + 2


async def test_posting_is_rationed_per_key_and_per_room(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One key posts its allowance, then ``rate_limited`` (a repeated post costs nothing,
    and another key still posts); fresh keys stop at the room's allowance, then get one
    post per refill, while another room is still posted to. A review's one key posted
    1 800 posts of 16 KiB in 3 s; a second review's 40 keys took one allowance shared by
    every room."""
    clock = Clock(TEST_EPOCH_MS)
    # The whole server's allowance just above one room's: posts the flooded room refuses
    # must not spend what is left of it.
    monkeypatch.setattr(server_module, "POSTS_BURST", ROOM_POSTS_BURST + 2 * POSTS_PER_KEY)
    async with running(clock, mapped=False) as s:
        await create_room(s, "lobby")
        await create_room(s, "other", PRIMARY)
        first = sign_post(LONER, "lobby", b"0", clock.now_ms())
        await s.chat.post(first)
        for n in range(1, POSTS_PER_KEY):
            await s.chat.post(sign_post(LONER, "lobby", b"%d" % n, clock.now_ms()))
        await refused("rate_limited", s.chat.post(sign_post(LONER, "lobby", b"+", clock.now_ms())))
        await s.chat.post(first)  # asking again costs nothing
        await s.chat.post(sign_post(PRIMARY, "lobby", b"mine", clock.now_ms()))
        posted = POSTS_PER_KEY + 1
        for n in range(ROOM_POSTS_BURST // POSTS_PER_KEY + 10):
            key = Identity.from_label(f"opengroup/poster-{n}")
            for m in range(POSTS_PER_KEY):
                post = sign_post(key, "lobby", b"%d" % m, clock.now_ms())
                if posted < ROOM_POSTS_BURST:
                    await s.chat.post(post)
                    posted += 1
                else:
                    await refused("rate_limited", s.chat.post(post))
        await s.chat.post(sign_post(SECONDARY, "other", b"another room", clock.now_ms()))
        # What the flooded room refused spent none of the server's allowance.
        for n in range(POSTS_PER_KEY):
            key = Identity.from_label(f"opengroup/other-poster-{n}")
            await s.chat.post(sign_post(key, "other", b"%d" % n, clock.now_ms()))
        await trio.sleep(1.5 * ROOM_POST_REFILL_S)  # one refill and a half (the clock is in ms)
        await s.chat.post(sign_post(SHARED, "lobby", b"after a while", clock.now_ms()))
        await refused("rate_limited", s.chat.post(sign_post(SHARED, "lobby", b"+", clock.now_ms())))


def test_a_room_keeps_its_newest_posts_within_its_bytes(tmp_path: Path) -> None:
    """Past ``room_bytes`` a room lets its oldest posts go (its newest are still read,
    another room keeps all of its own), so however much is posted a server holds at most
    ``max_rooms`` times that; a file from before the bound has its rooms counted."""
    path = tmp_path / "chat.sqlite3"
    store = OpenGroupStore(path, room_bytes=50_000)
    for room in ("busy", "quiet"):
        store.create_room(room, TEST_EPOCH_MS)
    quiet = sign_post(LONER, "quiet", b"q" * 10_000, TEST_EPOCH_MS)
    store.add(quiet, LONER.session_id, TEST_EPOCH_MS)
    posts = [sign_post(LONER, "busy", bytes([i]) * 10_000, TEST_EPOCH_MS + i) for i in range(10)]
    for post in posts:
        store.add(post, LONER.session_id, TEST_EPOCH_MS)
        assert store.room_bytes_held("busy") <= 50_000
    kept = [m.body for m in store.messages("busy", 0, 100)[0]]
    assert kept == [p.body for p in posts[-len(kept) :]] and 0 < len(kept) < 10
    assert [m.body for m in store.messages("quiet", 0, 100)[0]] == [quiet.body]
    held = store.room_bytes_held("busy")
    store.close()
    with sqlite3.connect(path) as old:  # as a file from before the bound would be
        old.execute("ALTER TABLE rooms DROP COLUMN bytes")
    again = OpenGroupStore(path, room_bytes=50_000)
    assert again.room_bytes_held("busy") == held
    assert again.room_bytes_held("quiet") == _post_bytes(quiet)
    again.close()


def _post_bytes(post: Post) -> int:
    return post_size(post, post.to_bytes())


@pytest.mark.parametrize("room", ["lobby", "r" * 64])
def test_a_room_of_tiny_posts_takes_about_its_bytes_on_disk(tmp_path: Path, room: str) -> None:
    """A room's bytes count what its rows take on disk, not their bodies and posts alone:
    one-byte posts took 2.35 (a 5-character room name) to 2.57 times (64) the budget. A
    file counted the old way is counted again when it is opened."""
    budget = 1024 * 1024
    path = tmp_path / "chat.sqlite3"
    store = OpenGroupStore(path, room_bytes=budget)
    store.create_room(room, TEST_EPOCH_MS)
    keys = [Identity.from_label(f"opengroup/tiny-{n}") for n in range(20)]
    for n in range(4000):
        store.add(sign_post(keys[n % 20], room, n.to_bytes(2, "big"), TEST_EPOCH_MS + n), "u", 0)
    held = store.room_bytes_held(room)
    assert budget - 2048 < held <= budget
    store.close()  # the last connection: the WAL goes into the file
    on_disk = path.stat().st_size
    assert 0.8 * budget < on_disk < 1.3 * budget, on_disk / budget
    with sqlite3.connect(path) as old:  # as a file counted the old way would be
        old.execute("UPDATE rooms SET bytes = 1")
        old.execute("PRAGMA user_version = 0")
    again = OpenGroupStore(path, room_bytes=budget)
    assert again.room_bytes_held(room) == held
    again.close()


def test_messages_reply_fits_a_frame(tmp_path: Path) -> None:
    """Many maximum-size posts come back in pages that each fit one frame."""
    store = OpenGroupStore(tmp_path / "chat.sqlite3")
    store.create_room("big", TEST_EPOCH_MS)
    for i in range(20):
        post = sign_post(LONER, "big", bytes([i]) * MAX_POST_BODY_BYTES, TEST_EPOCH_MS + i)
        store.add(post, LONER.session_id, TEST_EPOCH_MS)
    page, more = store.messages("big", 0, 100)
    assert more and _encoded(page) <= MAX_MESSAGES_REPLY_BYTES
    store.close()


def test_a_page_of_many_small_posts_fits_a_frame_with_what_each_carries(tmp_path: Path) -> None:
    """The reply's bound counts each message as it is encoded (ids, keys, time), not its
    body and post alone: 420 posts of two bytes made a 170 KB reply to ``limit`` 500,
    past the frame limit, and the reader's link closed with it."""
    store = OpenGroupStore(tmp_path / "chat.sqlite3")
    store.create_room("busy", TEST_EPOCH_MS)
    for i in range(420):
        post = sign_post(LONER, "busy", i.to_bytes(2, "big"), TEST_EPOCH_MS + i)
        store.add(post, LONER.session_id, TEST_EPOCH_MS)
    page, more = store.messages("busy", 0, 500)
    reply = encode_frame(Reply(1, {"messages": [m.to_wire() for m in page], "more": more}))
    assert more and len(reply) <= MAX_FRAME_BYTES
    assert _encoded(page) <= MAX_MESSAGES_REPLY_BYTES
    rest, more = store.messages("busy", page[-1].id, 500)
    assert not more and len(page) + len(rest) == 420
    store.close()


def _encoded(page: list[RoomMessage]) -> int:
    return sum(len(encode_cbor(m.to_wire())) for m in page)


# --- generated garbage ------------------------------------------------------------------------

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=70)
    | st.binary(max_size=200),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=8,
)
_POST = sign_post(LONER, "lobby", b"hello", TEST_EPOCH_MS)


_POST_FIELDS: dict[str, Any] = cbor2.loads(_POST.to_bytes())


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=400),
        _values.map(encode_cbor),
        st.dictionaries(
            st.sampled_from(["v", "room", "sender", "key", "primary", "ts", "body", "sig", "x"]),
            _values,
        ).map(lambda d: encode_cbor({**_POST_FIELDS, **d})),
    )
)
def test_post_decoder_only_raises_decode_error(data: bytes) -> None:
    try:
        post = Post.from_bytes(data)
    except DecodeError:
        return
    with contextlib.suppress(DecodeError):
        post.verify()


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["post", "messages", "create_room", "list_rooms"]),
    params=st.dictionaries(
        st.sampled_from(["room", "post", "since", "limit", "x"]), _values, max_size=3
    ),
)
def test_garbage_params_are_refused_and_server_keeps_serving(
    method: str, params: dict[str, Any]
) -> None:
    async def main() -> None:
        clock = Clock(TEST_EPOCH_MS)
        async with running(clock) as s:
            await create_room(s, "lobby")
            try:
                await s.chat.rpc.call(method, params)
            except RpcError as exc:
                assert exc.code in {"bad_request", "not_found"}, exc
            assert "internal" not in s.chat_server.rpc.stats.errors
            receipt = await s.chat.post(sign_post(LONER, "lobby", b"ok", clock.now_ms()))
            assert receipt.user == LONER.session_id

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
