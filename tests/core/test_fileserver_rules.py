"""What the file server refuses of a mapping or a revocation, rule by rule, in order."""

from __future__ import annotations

from dataclasses import replace

import pytest

from p2psync.errors import RpcError
from p2psync.fileserver.rules import PairFacts, PairingRow, applies_revocation, stores_mapping
from p2psync.mapping import PAIRING_WINDOW_MS

NOW = 10_000_000_000
PRIMARY, SECONDARY = "05" + "aa" * 32, "05" + "bb" * 32
NEW = PairFacts(None, None, False, False, 0)
ROW = PairingRow(PRIMARY, SECONDARY, NOW - 5_000, b"old record", True, None)


def store(facts: PairFacts = NEW, *, at: int = NOW, record: bytes = b"record") -> bool:
    return stores_mapping(record, PRIMARY, at, facts, max_secondaries=2, now_ms=NOW)


def refusal(facts: PairFacts = NEW, *, at: int = NOW) -> str:
    with pytest.raises(RpcError) as refused:
        store(facts, at=at)
    return refused.value.code


def test_a_new_pair_is_stored_and_the_active_mapping_again_is_nothing_to_do() -> None:
    assert store()
    assert not store(
        replace(NEW, existing=ROW), at=NOW - 10 * PAIRING_WINDOW_MS, record=b"old record"
    )


def test_a_mapping_may_be_as_old_as_the_pairing_window_and_not_ahead() -> None:
    assert store(at=NOW - PAIRING_WINDOW_MS)
    assert refusal(at=NOW - PAIRING_WINDOW_MS - 1) == "clock_skew"
    assert refusal(at=NOW + 60_001) == "clock_skew"


def test_a_revoked_pairing_stays_revoked_for_every_mapping_signed_before() -> None:
    revoked = replace(ROW, active=False, revoked_at_ms=NOW - 1_000)
    assert refusal(replace(NEW, existing=revoked), at=NOW - 1_000) == "unauthorized"
    assert store(replace(NEW, existing=revoked), at=NOW - 999)  # signed later: paired anew


def test_an_older_mapping_than_the_pairs_is_a_conflict() -> None:
    assert refusal(replace(NEW, existing=ROW), at=ROW.timestamp_ms) == "conflict"


@pytest.mark.parametrize(
    "facts",
    [
        replace(NEW, secondary_owner="05" + "cc" * 32),
        replace(NEW, secondary_is_primary=True),
        replace(NEW, primary_is_secondary=True),
        replace(NEW, other_secondaries=2),
    ],
)
def test_one_primary_per_secondary_no_chains_and_a_limit(facts: PairFacts) -> None:
    assert refusal(facts) == "conflict"


def test_the_secondarys_own_primary_may_map_it_again() -> None:
    assert store(replace(NEW, secondary_owner=PRIMARY, existing=ROW))


def test_the_first_rule_broken_is_the_one_said() -> None:
    everything = PairFacts(
        replace(ROW, active=False, revoked_at_ms=NOW), "05" + "cc" * 32, True, True, 5
    )
    assert refusal(everything, at=NOW - PAIRING_WINDOW_MS - 1) == "clock_skew"
    assert refusal(everything) == "unauthorized"


def test_a_revocation_applies_once_and_never_to_a_pairing_renewed_after_it() -> None:
    assert applies_revocation(NOW, ROW, NOW)
    assert not applies_revocation(NOW, replace(ROW, revoked_at_ms=NOW), NOW)
    with pytest.raises(RpcError) as renewed:
        applies_revocation(ROW.timestamp_ms - 1, ROW, NOW)
    assert renewed.value.code == "conflict"
    with pytest.raises(RpcError) as unknown:
        applies_revocation(NOW, None, NOW)
    assert unknown.value.code == "not_found"
    with pytest.raises(RpcError) as skewed:
        applies_revocation(NOW - 60_001, ROW, NOW)
    assert skewed.value.code == "clock_skew"
