"""Which uid each service folder is given: kept from run to run, never shared."""

from __future__ import annotations

import json

import pytest

from p2psync.service_users import (
    MAX_SERVICE_UIDS,
    SERVICE_UID_BASE,
    ServiceUserError,
    UidBook,
    as_service,
)

BASE = SERVICE_UID_BASE


def _nothing_taken(uid: int) -> bool:
    return False


A, B, C = "/srv/a/node-0|2049:11", "/srv/b/node-0|2049:12", "/srv/c/node-0|2049:13"


def test_a_folder_keeps_its_uid_and_a_new_one_gets_one_never_given() -> None:
    book = UidBook({A: BASE, B: BASE + 2})
    uid, after = book.give(A, _nothing_taken)
    assert uid == BASE and after == book
    uid, after = book.give(C, _nothing_taken)
    assert uid == BASE + 3, "BASE + 1 was never given, but a uid below the last given may have been"
    assert after.uids == {**book.uids, C: BASE + 3}


def test_a_uid_an_account_group_or_process_has_is_skipped() -> None:
    uid, _ = UidBook({}).give(A, lambda uid: uid < BASE + 3)
    assert uid == BASE + 3


def test_the_book_reads_back_what_it_wrote_and_refuses_what_it_would_not_write() -> None:
    book = UidBook({A: BASE, B: BASE + 7})
    assert UidBook.decode(book.encode()) == book
    for text in (
        "[]",
        json.dumps({"relative/node-0|1:2": BASE}),
        json.dumps({"/srv/a/node-0": BASE}),  # a path without the folder's identity
        json.dumps({A: 0}),  # root's: the folder would be handed to root
        json.dumps({A: BASE - 1}),
        json.dumps({A: BASE + MAX_SERVICE_UIDS}),
        json.dumps({A: True}),
        "not json",
    ):
        with pytest.raises(ServiceUserError):
            UidBook.decode(text)


def test_when_every_uid_is_given_it_says_so() -> None:
    with pytest.raises(ServiceUserError, match="every uid"):
        UidBook({}).give(A, lambda uid: True)


def test_a_service_runs_as_its_uid_with_no_capability_and_no_other_group() -> None:
    assert as_service(BASE + 5, ["python"]) == [
        "setpriv", "--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all",
        "--bounding-set=-all", "--clear-groups", f"--reuid={BASE + 5}", f"--regid={BASE + 5}",
        "python",
    ]  # fmt: skip
