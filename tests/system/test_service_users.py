"""What root, launching a network of hosts, does in folders its services have had: it
hands a folder over only while it is root's, follows no link a service left there, and
gives every folder a uid of its own, kept from run to run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p2psync.process_lock import ProcessLock
from p2psync.service_users import (
    SERVICE_UID_BASE,
    ServiceUserError,
    hand_over,
    open_log,
    refuse_foreign_folder,
    refuse_open_folder,
    service_uid,
    subordinate_ranges,
    taken_uids,
)
from p2psync.services import admit_node, load_or_create_identity, open_ledger

UID = SERVICE_UID_BASE + 250
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="handing a folder over takes root")


@needs_root
def test_a_folder_of_roots_is_handed_over_with_all_in_it_but_files_linked_in(
    tmp_path: Path,
) -> None:
    """What the launcher made is the service's; a file hard-linked in from elsewhere (as
    a service that ran as root before could have left) is not the folder's to give."""
    secret = tmp_path / "secret"
    secret.write_text("root's")
    folder = tmp_path / "node-0"
    (folder / "sub").mkdir(parents=True)
    (folder / "node.key").write_text("its own")
    os.link(secret, folder / "sub" / "shadow")
    hand_over(folder, UID)
    handed = (folder, folder / "sub", folder / "node.key")
    assert [path.stat().st_uid for path in handed] == [UID] * 3
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert secret.stat().st_uid == 0


@needs_root
def test_a_folder_its_service_has_had_is_not_walked_by_root(tmp_path: Path) -> None:
    """Whatever a service left in its folder (links that would lead root's chown where
    it pleases, swapped in while root walks) root does not look at: the folder is the
    service's already, and only its mode is put right."""
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    folder = tmp_path / "node-0"
    folder.mkdir(mode=0o755)
    (folder / "planted").symlink_to(elsewhere)
    (folder / "left").write_text("root's, as if a run of root's had left it")
    os.chown(folder, UID, UID)
    hand_over(folder, UID)
    assert (folder / "left").stat().st_uid == 0 and elsewhere.stat().st_uid == 0
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@needs_root
def test_a_folder_of_another_service_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "node-0"
    folder.mkdir()
    os.chown(folder, UID + 1, UID + 1)
    with pytest.raises(ServiceUserError, match=f"belongs to uid {UID + 1}"):
        hand_over(folder, UID)
    assert folder.stat().st_uid == UID + 1


def test_root_follows_no_link_a_service_left_at_its_key_or_registration(
    tmp_path: Path,
) -> None:
    """The launcher admits a node in its folder (reads its key, writes its registration):
    a link left at either name is refused, a file is not made where one points, and a
    pipe there is refused without waiting on it."""
    ledger = open_ledger(tmp_path / "ledger")
    folder = tmp_path / "node-0"
    folder.mkdir()
    load_or_create_identity(folder / "node.key")
    target = tmp_path / "made-by-root"
    (folder / "registration.cbor").symlink_to(target)
    with pytest.raises(OSError):
        admit_node(ledger, folder)
    assert not target.exists()

    (folder / "registration.cbor").unlink()
    (folder / "node.key").unlink()
    (folder / "node.key").symlink_to(tmp_path / "ledger" / "ledger.key")
    with pytest.raises(OSError):
        admit_node(ledger, folder)

    (folder / "node.key").unlink()
    os.mkfifo(folder / "node.key")
    with pytest.raises(OSError, match="not a regular file"):
        load_or_create_identity(folder / "node.key")


def test_every_folder_has_a_uid_of_its_own_kept_and_never_given_again(tmp_path: Path) -> None:
    """A folder keeps its uid; none is given twice, not even once its folder is gone (a
    program its service left elsewhere may still run as it), and a folder renamed is a
    new folder to the book (the old uid still owns it: it is refused, not handed over)."""
    book = tmp_path / "lib" / "service-uids.json"
    first, second = tmp_path / "a" / "node-0", tmp_path / "b" / "node-0"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    uid = service_uid(first, book)
    assert service_uid(first, book) == uid
    other = service_uid(second, book)
    assert other != uid and min(uid, other) >= SERVICE_UID_BASE
    assert stat.S_IMODE(book.stat().st_mode) == 0o600
    assert stat.S_IMODE(book.parent.stat().st_mode) == 0o700
    first.rmdir()
    third = tmp_path / "c" / "node-0"
    third.mkdir(parents=True)
    renamed = tmp_path / "b" / "renamed"
    second.rename(renamed)
    uids = {uid, other, service_uid(third, book), service_uid(renamed, book)}
    assert len(uids) == 4


def test_a_book_that_cannot_be_read_gives_no_uid(tmp_path: Path) -> None:
    """An unreadable book read as empty would give its uids again."""
    book = tmp_path / "service-uids.json"
    book.write_text("{")
    with pytest.raises(ServiceUserError):
        service_uid(tmp_path, book)


@needs_root
def test_roots_network_folder_must_be_roots_alone(tmp_path: Path) -> None:
    """Root writes its logs, ledger and records there: a folder someone else may write
    could hold a link at one of those names."""
    folder = tmp_path / "net"
    folder.mkdir(mode=0o755)
    refuse_open_folder(folder)
    folder.chmod(0o777)
    with pytest.raises(ServiceUserError, match="only root may write"):
        refuse_open_folder(folder)
    folder.chmod(0o755)
    os.chown(folder, UID, UID)
    with pytest.raises(ServiceUserError, match="only root may write"):
        refuse_open_folder(folder)


def test_a_services_log_is_its_readers_alone_and_never_a_link(tmp_path: Path) -> None:
    with open_log(tmp_path / "node-0.log") as log:
        log.write(b"started\n")
    assert stat.S_IMODE((tmp_path / "node-0.log").stat().st_mode) == 0o600
    (tmp_path / "relay-0.log").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        open_log(tmp_path / "relay-0.log")
    assert not (tmp_path / "elsewhere").exists()


def test_a_lock_file_is_its_owners_alone_and_never_a_link(tmp_path: Path) -> None:
    """Anyone who may open a lock file may hold a read lock on it, which stops the
    writer's; a link at its name would lead its owner elsewhere."""
    with ProcessLock(tmp_path / "network.lock"):
        assert stat.S_IMODE((tmp_path / "network.lock").stat().st_mode) == 0o600
    (tmp_path / "planted.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        ProcessLock(tmp_path / "planted.lock")
    assert not (tmp_path / "elsewhere").exists()


@needs_root
def test_a_folder_a_service_of_hosts_had_is_not_used_by_a_service_of_roots(
    tmp_path: Path,
) -> None:
    """Run on loopback (as root), a service would open whatever that uid left there."""
    folder = tmp_path / "node-0"
    folder.mkdir()
    refuse_foreign_folder(folder)  # root's own: fine
    os.chown(folder, UID, UID)
    with pytest.raises(ServiceUserError, match=f"belongs to uid {UID}"):
        refuse_foreign_folder(folder)


def test_uids_of_subordinate_ranges_and_running_processes_are_taken(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text(f"lxd:{UID}:10\nbroken line\nroot:x:5\n")
    assert subordinate_ranges(subuid) == [(UID, 10)]
    taken = taken_uids((subuid,))
    assert taken(UID) and taken(UID + 9) and not taken(UID + 10)
    assert taken(os.getuid()), "a running process's (this one's)"


@needs_root
def test_roots_network_folder_must_be_in_folders_of_roots_alone(tmp_path: Path) -> None:
    """Someone who may write a folder above it could swap the network's folder for a
    link; a sticky folder (``/tmp``) is allowed, as only its owner may rename in it."""
    above = tmp_path / "above"
    folder = above / "net"
    folder.mkdir(parents=True)
    refuse_open_folder(folder)
    above.chmod(0o777)
    with pytest.raises(ServiceUserError, match=f"{above} is not"):
        refuse_open_folder(folder)
    above.chmod(0o1777)
    refuse_open_folder(folder)


def test_a_log_kept_from_before_is_made_the_readers_alone(tmp_path: Path) -> None:
    log = tmp_path / "node-0.log"
    log.write_text("an older run's\n")
    log.chmod(0o644)
    with open_log(log):
        pass
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_asking_whether_a_lock_is_held_follows_no_link_and_waits_on_no_pipe(
    tmp_path: Path,
) -> None:
    (tmp_path / "linked.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        ProcessLock.held(tmp_path / "linked.lock")
    os.mkfifo(tmp_path / "piped.lock")
    assert not ProcessLock.held(tmp_path / "piped.lock")
