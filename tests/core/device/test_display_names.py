"""Display names: attacker-chosen text that ends up on a terminal beside an id, so every
way of carrying one refuses what a terminal would interpret, and the inbound core keeps
a friend's name beside their id and the latest of the user's own."""

from __future__ import annotations

import pytest

from p2psync.device.content import (
    MAX_NAME_CHARS,
    ContactRecord,
    Content,
    FriendAccept,
    FriendRequest,
    Profile,
    SyncProfile,
    check_display_name,
    decode_content,
    encode_content,
)
from p2psync.device.friends import ContactState
from p2psync.device.inbound import PutContact, Reject, SetDisplayName
from p2psync.device.rows import Contact
from p2psync.errors import DecodeError
from p2psync.wire import encode_cbor

from .test_inbound import BOB, ME, SIBLING, Known, friend, inbound, run

USER = BOB.session_id

#: One name per refusal; each passes decoding without the check it names.
REFUSED = {
    "too long": "x" * (MAX_NAME_CHARS + 1),
    "empty": "",
    "escape sequence (Cc)": "\x1b[2J\x1b[31mBob",
    "carriage return (Cc)": "Bob\rAlice",
    "bidi override (Cf)": "Bob\u202egnp.exe",
    "bidi isolate (Cf)": "\u2067Bob",
    "zero-width space (Cf)": "Bo\u200bb",
    "line separator (Zl)": "Bob\u2028Alice",
    "paragraph separator (Zp)": "Bob\u2029",
    "private use (Co)": "Bob\ue000",
    "unassigned (Cn)": "Bob\U000e0080",
    "lone surrogate (Cs)": "Bob\ud800",
    "no-break space (Zs)": "Bob\u00a0Smith",
    "em space (Zs)": "Bob\u2003Smith",
    "ideographic space (Zs)": "Bob\u3000",
    "spaces only": "   ",
    "a single space": " ",
    "bracketed id opening": "Bob (05ab…)",
    "fullwidth bracketed id opening": "Bob \uff08\uff10\uff15ab",
    "hex run": "05ab12cd…ef01",
    "upper-case hex run": "DEADBEEF",
    "fullwidth hex run": "\uff10\uff15\uff41\uff42\uff11\uff12\uff43\uff44",
}


@pytest.mark.parametrize("name", REFUSED.values(), ids=REFUSED.keys())
def test_check_display_name_refuses(name: str) -> None:
    with pytest.raises(DecodeError, match="display name"):
        check_display_name(name)


@pytest.mark.parametrize(
    "name",
    ["Bob", "Ålice Müller", "محمد", "李小龙", "Zoë 🙂", "x" * 64, " Bob ", "Café 05", "facade"],
)
def test_check_display_name_keeps_ordinary_names(name: str) -> None:
    assert check_display_name(name) == name


@pytest.mark.parametrize("name", REFUSED.values(), ids=REFUSED.keys())
@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("profile", {"user": USER}),
        ("sync_profile", {}),
        ("friend_request", {"user": USER, "devices": [USER], "text": "hi"}),
        ("friend_accept", {"user": USER, "devices": [USER]}),
        ("sync_contact", {"user": USER, "state": "friend", "devices": [USER]}),
    ],
)
def test_every_record_carrying_a_name_refuses_it_at_decode(
    kind: str, body: dict[str, object], name: str
) -> None:
    # CBOR cannot encode a lone surrogate at all: that one is refused by the encoder.
    try:
        raw = encode_cbor({**body, "name": name})
    except (UnicodeEncodeError, ValueError):
        assert name == REFUSED["lone surrogate (Cs)"]
        return
    with pytest.raises(DecodeError):
        decode_content(kind, raw)


@pytest.mark.parametrize(
    "content",
    [
        Profile(USER, "Bob"),
        SyncProfile("Alice"),
        FriendRequest(USER, (USER,), "hi", "Bob"),
        FriendRequest(USER, (USER,), "hi"),
        FriendAccept(USER, (USER,), "Bob"),
        ContactRecord(USER, ContactState.FRIEND, (USER,), "Bob"),
    ],
)
def test_names_round_trip(content: Content) -> None:
    kind, body = encode_content(content)
    assert decode_content(kind, body) == content


def test_a_friends_new_name_is_kept_beside_their_id() -> None:
    known = Known(contacts={USER: friend(USER)})
    [effect] = run(known, inbound(Profile(USER, "Bob"), BOB))
    assert effect == PutContact(Contact(USER, ContactState.FRIEND, (USER,), "", "Bob"))


def test_a_name_from_someone_who_is_no_friend_is_refused() -> None:
    [effect] = run(Known(), inbound(Profile(USER, "Bob"), BOB))
    assert isinstance(effect, Reject) and "not a friend" in effect.reason


def test_a_name_for_another_user_is_refused() -> None:
    """Bob cannot rename Carol: the record must be signed by a device of the user it names."""
    carol = SIBLING.session_id
    known = Known(contacts={carol: friend(carol), USER: friend(USER)})
    [effect] = run(known, inbound(Profile(carol, "Mallory"), BOB), {carol: (carol,)})
    assert isinstance(effect, Reject)


def test_a_friend_request_carries_the_requesters_name() -> None:
    request = FriendRequest(USER, (USER,), "hi", "Bob")
    [effect] = run(Known(), inbound(request, BOB), {USER: (USER,)})
    assert isinstance(effect, PutContact)
    assert effect.contact.name == "Bob" and effect.contact.state == ContactState.PENDING


def test_the_latest_own_name_from_a_sibling_wins() -> None:
    known = Known(display_name_at_ms=1000)
    assert run(known, inbound(SyncProfile("Alice"), ME, at=2000)) == [SetDisplayName("Alice", 2000)]
    assert run(known, inbound(SyncProfile("Old"), ME, at=1000)) == []  # our own, read back
