"""The way of one request through a swarm's members: what each answer means."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2psync.errors import RpcError
from p2psync.swarm.attempts import (
    REFUSED_FOR_GOOD,
    GiveUp,
    MemberAttempts,
    Refresh,
    failed_last,
    second_opinion,
    with_second_opinion,
)
from p2psync.swarm.ring import NodeInfo

NODES = [NodeInfo(f"{n:064x}", f"wss://node{n}") for n in range(5)]


def refusal(code: str = "unauthorized") -> RpcError:
    return RpcError(code, "no")


def test_members_are_asked_in_turn_after_each_failure_that_may_pass() -> None:
    attempts = MemberAttempts(NODES[:3])
    for node, error in zip(NODES, [OSError("down"), refusal("rate_limited")], strict=False):
        assert attempts.next() is node
        assert attempts.failed(node, error) is None
    assert attempts.next() is NODES[2]
    assert attempts.failed(NODES[2], refusal("internal")) is None
    assert attempts.next() is None
    assert attempts.exhausted().code == "internal"


def test_nobody_answering_is_unavailable_and_says_why() -> None:
    attempts = MemberAttempts(NODES[:1])
    attempts.failed(NODES[0], OSError("connection refused"))
    error = attempts.exhausted()
    assert error.code == "unavailable" and "connection refused" in error.message


def test_one_members_refusal_for_good_is_not_taken_while_no_other_answers() -> None:
    attempts = MemberAttempts(NODES[:3])
    assert attempts.failed(NODES[0], refusal()) is None
    assert attempts.failed(NODES[1], OSError("down")) is None
    assert attempts.failed(NODES[2], refusal("unavailable")) is None
    error = attempts.exhausted()
    assert error.code == "unavailable" and "one member refused" in error.message


def test_a_refusal_for_good_is_taken_from_a_second_member() -> None:
    attempts = MemberAttempts(NODES[:3])
    first = refusal("too_large")
    assert attempts.failed(NODES[0], first) is None
    assert attempts.failed(NODES[1], refusal("bad_ttl")) == GiveUp(first)


def test_the_one_member_of_a_swarm_of_one_is_taken_at_its_word() -> None:
    attempts = MemberAttempts(NODES[:1])
    error = refusal()
    assert attempts.failed(NODES[0], error) == GiveUp(error)


def test_a_second_opinion_is_asked_of_another_member_and_needs_only_its_word() -> None:
    attempts = MemberAttempts(NODES[:3], besides=NODES[0])
    assert attempts.next() == NODES[1]
    attempts.restart(NODES[:3])  # the swarm read again still lists the first refuser
    assert attempts.next() == NODES[1]
    error = refusal()
    assert attempts.failed(NODES[1], error) == GiveUp(error)


def test_a_refusal_the_caller_caused_is_given_up_at_once() -> None:
    attempts = MemberAttempts(NODES[:3])
    error = refusal("clock_skew")
    assert attempts.failed(NODES[0], error) == GiveUp(error)


def test_wrong_swarm_refreshes_twice_then_gives_up() -> None:
    attempts = MemberAttempts(NODES[:2])
    redirect = refusal("wrong_swarm")
    assert attempts.failed(NODES[0], redirect) == Refresh()
    attempts.restart(NODES[2:4])
    assert attempts.next() is NODES[2]
    assert attempts.failed(NODES[2], redirect) == Refresh()
    attempts.restart(NODES[:2])
    assert attempts.failed(NODES[0], redirect) == GiveUp(redirect)


def test_a_member_that_refused_for_good_is_not_asked_again_after_a_refresh() -> None:
    attempts = MemberAttempts(NODES[:3])
    attempts.failed(attempts.next() or NODES[0], refusal())
    attempts.failed(attempts.next() or NODES[1], refusal("wrong_swarm"))
    attempts.restart(NODES[:3])
    assert attempts.next() is NODES[1]


def test_a_refresh_to_a_swarm_of_one_takes_its_word() -> None:
    attempts = MemberAttempts(NODES[:3])
    attempts.failed(NODES[0], refusal("wrong_swarm"))
    attempts.restart(NODES[3:4])
    error = refusal()
    assert attempts.failed(NODES[3], error) == GiveUp(error)


def test_one_key_at_two_urls_is_one_word() -> None:
    same = NodeInfo(NODES[0].pubkey, "wss://elsewhere")
    attempts = MemberAttempts([NODES[0], same, NODES[1]])
    first = refusal()
    assert attempts.next() is NODES[0]
    assert attempts.failed(NODES[0], first) is None
    assert attempts.next() is NODES[1]  # the same key elsewhere is not asked again
    assert attempts.failed(NODES[1], refusal("bad_ttl")) == GiveUp(first)


def test_a_key_that_refused_says_nothing_more_at_another_url() -> None:
    attempts = MemberAttempts(NODES[:3])
    assert attempts.failed(NODES[0], refusal()) is None
    again = NodeInfo(NODES[0].pubkey, "wss://elsewhere")
    assert attempts.failed(again, refusal()) is None  # still one word
    assert attempts.exhausted().code != "unauthorized"


ANSWERS = st.one_of(
    st.sampled_from(["unavailable", "rate_limited", "internal", *REFUSED_FOR_GOOD]).map(refusal),
    st.just(OSError("down")),
)


@given(size=st.integers(1, 5), answers=st.lists(ANSWERS, max_size=5))
def test_a_refusal_for_good_is_never_taken_on_one_word_in_a_bigger_swarm(
    size: int, answers: list[Exception]
) -> None:
    attempts = MemberAttempts(NODES[:size])
    refusers: set[str] = set()
    for answer in answers:
        node = attempts.next()
        if node is None:
            break
        if isinstance(answer, RpcError) and answer.code in REFUSED_FOR_GOOD:
            refusers.add(node.pubkey)
        step = attempts.failed(node, answer)
        if isinstance(step, GiveUp):
            assert len(refusers) >= min(2, size)
            return
    # Out of members, or of answers: a caller that gives up then asks again later.
    assert attempts.exhausted().code not in REFUSED_FOR_GOOD


def test_only_refusals_for_good_in_a_bigger_swarm_get_a_second_opinion() -> None:
    results: list[object] = [(b"h", 1), refusal(), refusal("rate_limited"), refusal("bad_ttl")]
    assert second_opinion(results, swarm_size=3) == [1, 3]
    assert second_opinion(results, swarm_size=1) == []


def test_the_second_members_answers_stand_whatever_they_are() -> None:
    first: list[tuple[bytes, int] | RpcError] = [(b"a", 1), refusal(), refusal()]
    second: list[tuple[bytes, int] | RpcError] = [(b"b", 2), refusal("too_large")]
    assert with_second_opinion(first, [1, 2], second) == [(b"a", 1), (b"b", 2), second[1]]


def test_a_second_opinion_that_failed_confirms_nothing_unless_it_refused_the_batch() -> None:
    first: list[tuple[bytes, int] | RpcError] = [refusal(), (b"a", 1)]
    lost = with_second_opinion(first, [0], OSError("down"))
    assert isinstance(lost[0], RpcError) and lost[0].code == "unavailable"
    whole = refusal("bad_request")
    assert with_second_opinion(first, [0], whole)[0] is whole
    busy = with_second_opinion(first, [0], refusal("rate_limited"))
    assert isinstance(busy[0], RpcError) and busy[0].code == "unavailable"


def test_members_that_failed_lately_are_asked_last_the_latest_last_of_all() -> None:
    order = failed_last(NODES, [NODES[3].pubkey, NODES[0].pubkey, "gone" * 16])
    assert order == [NODES[1], NODES[2], NODES[4], NODES[3], NODES[0]]
    assert failed_last(NODES, []) == NODES
