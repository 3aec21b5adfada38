"""The sans-I/O cores driven directly: onion layers, path build through relay cores,
relay hygiene (drops counted, forwarding unaffected), introsets and the DHT store."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay import introset as introset_module
from overlay.cells import CellKind, decode_cell, make_cell
from overlay.clock import TEST_EPOCH_MS
from overlay.constants import CELL_BODY_BYTES, CELL_BYTES, PATH_ID_BYTES
from overlay.contact import Contact, ContactError, make_contact, verified_directory
from overlay.dht import DhtStatus, IntrosetStore, closest_relays, get_request, put_request
from overlay.introset import (
    Intro,
    IntrosetError,
    open_introset,
    rendezvous_keys,
    seal_introset,
)
from overlay.keys import KeyPair
from overlay.onion import HopKeys, LayerError
from overlay.path import Path, PathState, Payload, freshest
from overlay.relay_core import RelayCore
from overlay.session import SessionCore

NOW = TEST_EPOCH_MS


def relay_keys(n: int) -> list[KeyPair]:
    return [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(n)]


class Net:
    """Relay cores wired by address: deliver every send until nothing moves."""

    def __init__(self, count: int) -> None:
        self.keys = relay_keys(count)
        self.contacts = [make_contact(k, f"mem:r{i}", NOW) for i, k in enumerate(self.keys)]
        directory = verified_directory(self.contacts, NOW)
        self.cores = {f"mem:r{i}": RelayCore(k, directory) for i, k in enumerate(self.keys)}
        self.to_owner: list[bytes] = []
        self.log: dict[str, list[tuple[str, bytes]]] = {a: [] for a in self.cores}

    def inject(self, address: str, data: bytes, link: str = "in:owner") -> None:
        queue = [(address, link, data)]
        while queue:
            address, link, data = queue.pop(0)
            self.log[address].append(("in", data))
            for target, out in self.cores[address].receive(link, data, NOW):
                self.log[address].append(("out", out))
                if target == "in:owner":
                    self.to_owner.append(out)
                elif target.startswith("out:"):
                    queue.append((target[4:], f"in:{address}", out))
                else:  # back to the relay that opened the link
                    queue.append((target[3:], f"out:{address}", out))

    def path(self, indices: list[int]) -> Path:
        path, cell = Path.build([self.contacts[i] for i in indices], NOW)
        self.inject(f"mem:r{indices[0]}", cell)
        reply = self.to_owner.pop()
        assert path.unwrap(decode_cell(reply).body, NOW) == bytes((Payload.BUILT,))
        path.on_built(NOW)
        return path


def test_layers_round_trip_and_refuse_tampering() -> None:
    sealer, _ = HopKeys.derive(bytes(32)).owner_side()
    opener, _ = HopKeys.derive(bytes(32)).relay_side()
    sealed = sealer.seal(b"x" * 100)
    with pytest.raises(LayerError):
        opener.open(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    assert opener.open(sealed) == b"x" * 100


def test_contacts_verify_and_expire() -> None:
    keys = relay_keys(1)[0]
    contact = make_contact(keys, "127.0.0.1:9000", NOW)
    assert Contact.decode(contact.encode()) == contact
    contact.verify(NOW)
    with pytest.raises(ContactError):
        contact.verify(contact.expiry_ms)
    forged = Contact(contact.pubkey, "127.0.0.1:9001", contact.expiry_ms, contact.signature)
    assert verified_directory([forged, contact], NOW) == {contact.pubkey: contact}


@pytest.mark.parametrize("hops", [1, 2, 3, 5, 8])
def test_paths_of_every_length_build_and_carry_payloads(hops: int) -> None:
    net = Net(8)
    path = net.path(list(range(hops)))
    assert path.state is PathState.ESTABLISHED
    net.inject("mem:r0", path.wrap(bytes((Payload.PING,)) + b"token123"))
    assert (
        path.unwrap(decode_cell(net.to_owner.pop()).body, NOW)
        == bytes((Payload.PONG,)) + b"token123"
    )
    # The build message has the same size whatever the length.
    assert all(len(d) == CELL_BYTES for log in net.log.values() for _, d in log)


def test_middle_relay_sees_fixed_size_cells_and_fresh_bytes_on_each_link() -> None:
    net = Net(3)
    path = net.path([0, 1, 2])
    owner = KeyPair.from_seed(b"\x77" * 32)
    for size in (1, 500, 1000):
        net.inject("mem:r0", path.wrap(bytes((Payload.PING,)) + owner.public[:8] + bytes(size)))
    middle = net.log["mem:r1"]
    assert {len(data) for _, data in middle} == {CELL_BYTES}
    incoming = {data[17:] for d, data in middle if d == "in"}
    outgoing = {data[17:] for d, data in middle if d == "out"}
    assert not incoming & outgoing  # every link carries different bytes (replies too)
    assert all(b"mem:" not in data for _, data in middle)


def test_relay_drops_garbage_counts_it_and_keeps_forwarding() -> None:
    net = Net(3)
    path = net.path([0, 1, 2])
    first = net.cores["mem:r0"]
    good = path.wrap(bytes((Payload.PING,)) + b"12345678")
    net.inject("mem:r0", b"short")
    net.inject("mem:r0", make_cell(CellKind.DATA, b"\x01" * PATH_ID_BYTES, b""))
    tampered = bytearray(good)
    tampered[40] ^= 1
    net.inject("mem:r0", bytes(tampered))
    net.inject("mem:r0", good)
    assert path.unwrap(decode_cell(net.to_owner.pop()).body, NOW)[1:] == b"12345678"
    net.inject("mem:r0", good)  # replayed data cell
    net.inject("mem:r0", good, link="in:someone-else")
    assert first.stats.dropped_malformed == 1
    assert first.stats.dropped_unknown_path == 1
    assert first.stats.dropped_tampered == 1
    assert first.stats.dropped_replay == 1
    assert first.stats.dropped_wrong_link == 1
    assert net.to_owner == []
    net.inject("mem:r0", path.wrap(bytes((Payload.PING,)) + b"still ok"))
    assert path.unwrap(decode_cell(net.to_owner.pop()).body, NOW)[1:] == b"still ok"


def test_replayed_build_is_dropped() -> None:
    net = Net(3)
    path, cell = Path.build(net.contacts, NOW)
    net.inject("mem:r0", cell)
    net.inject("mem:r0", cell, link="in:other")
    assert net.cores["mem:r0"].stats.dropped_replay == 1
    assert net.cores["mem:r0"].stats.builds == 1
    assert path.state is PathState.BUILDING


def test_endpoint_side_drops_forged_replies() -> None:
    net = Net(2)
    path = net.path([0, 1])
    with pytest.raises(LayerError):
        path.unwrap(bytes(CELL_BODY_BYTES), NOW)


def test_transfer_between_paths_reaches_the_other_owner() -> None:
    net = Net(4)
    a = net.path([0, 1])
    b = net.path([2, 3])
    payload = bytes((Payload.TRANSFER,)) + b.terminal.pubkey + b.intro_id + b"hello b"
    net.inject("mem:r0", a.wrap(payload))
    delivered = net.to_owner.pop()
    assert b.unwrap(decode_cell(delivered).body, NOW) == bytes((Payload.DELIVER,)) + b"hello b"


SECRET = b"\x05" * 32


def test_introsets_are_for_siblings_only() -> None:
    owner = KeyPair.from_seed(b"\x09" * 32)
    keys = rendezvous_keys(SECRET, owner.public, 1)
    intro = Intro(b"\x01" * 32, b"\x02" * 16, NOW + 60_000)
    introset = seal_introset(keys, owner, [intro], NOW + 60_000)
    assert open_introset(introset, keys, owner.public, NOW) == [intro]
    stranger = rendezvous_keys(b"\x06" * 32, owner.public, 1)
    assert stranger.location != keys.location
    with pytest.raises(IntrosetError):
        open_introset(introset, stranger, owner.public, NOW)
    assert owner.public not in introset and intro.relay not in introset


def test_an_introset_body_signed_without_its_domain_does_not_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The owner's signature over the body is under the introset domain: the same key's
    signature over the same bytes made for anything else does not open an introset."""
    owner = KeyPair.from_seed(b"\x09" * 32)
    keys = rendezvous_keys(SECRET, owner.public, 1)
    monkeypatch.setattr(introset_module, "BODY_DOMAIN", b"")
    undomained = seal_introset(keys, owner, [], NOW + 60_000)
    monkeypatch.undo()
    with pytest.raises(IntrosetError, match="body signature"):
        open_introset(undomained, keys, owner.public, NOW)
    domained = seal_introset(keys, owner, [], NOW + 60_000)
    assert open_introset(domained, keys, owner.public, NOW) == []


def test_dht_store_checks_signatures_and_expiry() -> None:
    owner = KeyPair.from_seed(b"\x09" * 32)
    keys = rendezvous_keys(SECRET, owner.public, 1)
    introset = seal_introset(keys, owner, [], NOW + 60_000)
    store = IntrosetStore()
    assert store.handle("in:1", put_request(introset), NOW) == bytes((DhtStatus.STORED,))
    forged = introset[:-1] + bytes([introset[-1] ^ 1])
    assert store.handle("in:1", put_request(forged), NOW) == bytes((DhtStatus.REJECTED,))
    found = store.handle("in:2", get_request(keys.location), NOW)
    assert found == bytes((DhtStatus.FOUND,)) + introset
    later = store.handle("in:2", get_request(keys.location), NOW + 60_000)
    assert later == bytes((DhtStatus.NOT_FOUND,))
    relays = [k.public for k in relay_keys(10)]
    assert len(set(closest_relays(keys.location, relays))) == 4
    assert closest_relays(keys.location, relays) == closest_relays(keys.location, relays[::-1])


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from([0, *map(int, CellKind), 99]), body=st.binary(max_size=CELL_BYTES))
def test_relays_survive_any_cell(kind: int, body: bytes) -> None:
    net = Net(3)
    path = net.path([0, 1, 2])
    for core in net.cores.values():
        data = bytes([kind]) + path.first_id + body
        core.receive("in:owner", data[:CELL_BYTES].ljust(CELL_BYTES, b"\0"), NOW)
        core.receive("in:owner", data, NOW)
    net.inject("mem:r0", path.wrap(bytes((Payload.PING,)) + b"12345678"))
    assert len(net.to_owner) == 1


@settings(max_examples=300, deadline=None)
@given(packet=st.binary(max_size=300), prefix=st.sampled_from([b"", b"\x01", b"\x02", b"\x03"]))
def test_sessions_ignore_any_packet(packet: bytes, prefix: bytes) -> None:
    a = SessionCore.initiate(KeyPair.from_seed(b"\x0a" * 32), relay_keys(1)[0].public, 0)
    init = a.outgoing(0)[0]
    a.receive_packet(prefix + init[1:9] + packet, 1)
    b = SessionCore.respond(relay_keys(1)[0], init, 0)
    b.receive_packet(prefix + init[1:9] + packet, 1)
    assert not b.received


def test_a_session_names_the_path_that_expires_last() -> None:
    """The intro a session gives its peer is where the peer sends, maybe minutes later:
    of an expiring path and its successor, it must be the successor (the rule that
    keeps a session reachable across path rebuilds), and never a dead or unbuilt one."""
    net = Net(6)
    old = net.path([0, 1, 2])
    successor, _ = Path.build([net.contacts[i] for i in (3, 4, 5)], NOW + 540_000)
    assert freshest([old, successor], NOW + 541_000) is old  # successor not built yet
    successor.on_built(NOW + 541_000)
    assert freshest([old, successor], NOW + 541_000) is successor
    assert freshest([successor, old], NOW + 541_000) is successor
    successor.state = PathState.DEAD
    assert freshest([old, successor], NOW + 541_000) is old
    assert freshest([old, successor], old.expiry_ms) is None
