"""A relay's path state is bounded (:mod:`overlay.transit`): hops and remembered builds,
in all and per host, so one neighbour flooding builds fills its own share and leaves the
others' (a review built 3 400 paths a second through one link, 1.5 KiB each, kept for the
paths' lifetime)."""

from __future__ import annotations

from overlay.cells import decode_cell
from overlay.constants import DEFAULT_PATH_LIFETIME_MS
from overlay.contact import make_contact, verified_directory
from overlay.keys import KeyPair
from overlay.path import Path, Payload
from overlay.relay_core import RelayCore
from overlay.transit import TransitCaps
from tests.core.overlay.test_cores import NOW

RELAY = KeyPair.from_seed(b"\x52" * 32)
CONTACTS = [make_contact(RELAY, "mem:relay", NOW)]


def relay(hops: int, builds: int, share: int) -> RelayCore:
    return RelayCore(
        RELAY, verified_directory(CONTACTS, NOW), transit_caps=TransitCaps(hops, builds, share)
    )


def built(core: RelayCore, peer: str, link: str = "", now_ms: int = NOW) -> bool:
    """Whether a one-hop path from ``peer`` is built (its owner is answered)."""
    path, build = Path.build(CONTACTS, now_ms)
    sent = core.receive(link or f"in:{peer}", build, now_ms, peer=f"{peer}:4000")
    if not sent:
        return False
    [(_, reply)] = sent
    return path.unwrap(decode_cell(reply).body, now_ms) == bytes((Payload.BUILT,))


def test_a_host_past_its_share_of_hops_is_dropped_and_the_others_are_served() -> None:
    core = relay(hops=8, builds=64, share=4)  # two hops a host
    assert built(core, "10.0.0.1") and built(core, "10.0.0.1", link="in:second")
    assert not built(core, "10.0.0.1", link="in:third")  # per host, whatever its links
    assert core.stats.dropped_transit_full == 1
    assert built(core, "10.0.0.2")
    assert core.hop_count == 3


def test_hops_in_all_are_capped_whatever_the_hosts() -> None:
    core = relay(hops=4, builds=64, share=1)
    assert all(built(core, f"10.0.0.{i}") for i in range(4))
    assert not built(core, "10.0.0.9")


def test_hops_are_given_back_when_their_link_closes_or_they_expire() -> None:
    core = relay(hops=8, builds=64, share=4)
    assert built(core, "10.0.0.1", link="in:a") and built(core, "10.0.0.1", link="in:b")
    core.link_lost("in:a")
    assert built(core, "10.0.0.1", link="in:c")
    later = NOW + DEFAULT_PATH_LIFETIME_MS + 1
    core.expire(later)
    assert core.hop_count == 0
    assert built(core, "10.0.0.1", now_ms=later) and built(core, "10.0.0.1", now_ms=later)


def test_builds_remembered_against_replay_stay_counted_until_their_paths_expiry() -> None:
    """A host that builds, drops its link and builds again cannot grow the replay filter
    past its share: the builds stay counted until their paths would have expired."""
    core = relay(hops=64, builds=8, share=4)  # two remembered builds a host
    assert built(core, "10.0.0.1", link="in:a") and built(core, "10.0.0.1", link="in:b")
    core.link_lost("in:a")
    core.link_lost("in:b")
    assert core.hop_count == 0
    assert not built(core, "10.0.0.1", link="in:c")
    assert built(core, "10.0.0.2")
    later = NOW + DEFAULT_PATH_LIFETIME_MS + 1
    core.expire(later)
    assert built(core, "10.0.0.1", link="in:c", now_ms=later)


NEXT = [KeyPair.from_seed(bytes([0x60 + i]) * 32) for i in range(2)]
NEXT_CONTACTS = [make_contact(key, f"mem:next-{i}", NOW) for i, key in enumerate(NEXT)]


def forwarded(core: RelayCore, peer: str, onward: int) -> bool:
    """Whether a build from ``peer`` through this relay on to relay ``onward`` goes on."""
    _, build = Path.build([CONTACTS[0], NEXT_CONTACTS[onward]], NOW)
    sent = core.receive(f"in:{peer}", build, NOW, peer=f"{peer}:4000")
    return [link for link, _ in sent] == [f"out:mem:next-{onward}"]


def test_one_host_fills_no_more_than_its_onward_share_toward_a_next_relay() -> None:
    """The next relay counts every path this one carries to it as this relay's: one host
    filling that share would shut every honest path this way out (a review's lockout of
    a neighbour), so a host's paths to any one next relay are a quarter of its share."""
    core = RelayCore(
        RELAY,
        verified_directory(CONTACTS + NEXT_CONTACTS, NOW),
        transit_caps=TransitCaps(hops=64, builds=256, share_per_host=4, onward_share=4),
    )  # 16 hops a host, 4 of them toward one next relay
    assert all(forwarded(core, "10.0.0.1", 0) for _ in range(4))
    assert not forwarded(core, "10.0.0.1", 0)
    assert forwarded(core, "10.0.0.1", 1)  # another way on
    assert forwarded(core, "10.0.0.2", 0)  # another host
    assert core.stats.dropped_transit_full == 1
