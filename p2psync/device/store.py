"""A device's durable state: one SQLite file holding its keys, history, contacts, outbox,
read cursors and pairing attempts.

Why one file and these tables:

* **History** is keyed by message id (the dedupe key everywhere) and ordered by
  ``(timestamp_ms, id)``, the order the sync layer reconciles in (DESIGN.md §7); ``seq``
  is the local arrival order, which is what a "new messages" stream follows.
* **Outbox** makes ``send`` durable: the message, its history row and its first sealed
  copy are written in one transaction before ``send`` returns, and every further copy is
  written here *before* it is stored in a swarm. A crash at any point therefore resends
  the very same ciphertexts, which the swarm deduplicates by hash: nothing accepted is
  lost and nothing arrives twice.
* **Cursors** keep each (owner, namespace) stream's ``last_hash`` across restarts.

The store is synchronous and knows nothing of Trio; every query is short. WAL with
``synchronous=FULL`` because a device, unlike a node, may lose power at any moment and its
outbox is the only copy of what the user just sent.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from ..database import add_column_if_missing, open_database, open_read_only, transaction
from ..fileserver.rules import MAX_LISTED_REVOCATIONS
from ..identity import message_hash
from ..mapping import Revocation
from ..process_lock import ProcessLock
from ..swarm.access import MailboxAccess
from ..swarm.cursor import Cursor
from ..swarm.messages import Message
from ..wire import Fields, decode_cbor, encode_cbor
from .friends import ContactState
from .pairing import WAITING_HERE, PairingState
from .rows import Contact, Copy, HistoryItem, OutboxEntry, Pairing, Pending

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    timestamp_ms INTEGER NOT NULL,
    conversation TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    sender TEXT NOT NULL,
    device TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (timestamp_ms, id);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation, timestamp_ms);
CREATE TABLE IF NOT EXISTS contacts (
    user TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    devices BLOB NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    recipient TEXT NOT NULL,
    body BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    message_id BLOB,
    expanded INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox_copies (
    seq INTEGER NOT NULL,
    owner TEXT NOT NULL,
    namespace INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (seq, owner, namespace)
);
CREATE TABLE IF NOT EXISTS cursors (
    owner TEXT NOT NULL,
    namespace INTEGER NOT NULL,
    last_hash BLOB,
    PRIMARY KEY (owner, namespace)
);
CREATE TABLE IF NOT EXISTS pairings (
    request_id BLOB PRIMARY KEY,
    incoming INTEGER NOT NULL,
    peer TEXT NOT NULL,
    name TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS siblings (
    device TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    overlay BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_pending (
    id BLOB PRIMARY KEY,
    published_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    inbound INTEGER NOT NULL,
    fell_back INTEGER NOT NULL DEFAULT 0,
    relayed_from TEXT
);
CREATE TABLE IF NOT EXISTS sync_copies (
    id BLOB NOT NULL,
    owner TEXT NOT NULL,
    namespace INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (id, owner, namespace)
);
CREATE TABLE IF NOT EXISTS deletions (
    owner TEXT NOT NULL,
    namespace INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (owner, namespace, hash)
);
CREATE TABLE IF NOT EXISTS deferred (
    hash BLOB PRIMARY KEY,
    owner TEXT NOT NULL,
    namespace INTEGER NOT NULL,
    data BLOB NOT NULL,
    deferred_ms INTEGER,
    friends INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS revocations (
    primary_id TEXT NOT NULL,
    secondary TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (primary_id, secondary)
);
CREATE TABLE IF NOT EXISTS accesses (
    owner TEXT PRIMARY KEY,
    expiry INTEGER NOT NULL,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS accesses_carried (
    owner TEXT PRIMARY KEY,
    expiry INTEGER NOT NULL,
    signer BLOB NOT NULL
);
"""


_HISTORY_COLUMNS = "seq, id, timestamp_ms, conversation, outgoing, sender, device, text"


def _item(row: tuple[int, bytes, int, str, int, str, str, str]) -> HistoryItem:
    return HistoryItem(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6], row[7])


#: A pairing row as :func:`_pairing` reads it.
_SELECT_PAIRINGS = (
    "SELECT request_id, incoming, peer, name, timestamp_ms, state, data FROM pairings"
)


def _pairing(row: tuple[bytes, int, str, str, int, str, bytes]) -> Pairing:
    return Pairing(row[0], bool(row[1]), row[2], row[3], row[4], PairingState(row[5]), row[6])


def _open_for_writing(path: str | Path) -> sqlite3.Connection:
    db = open_database(path, _SCHEMA, synchronous="FULL")
    add_column_if_missing(db, "contacts", "name", "TEXT NOT NULL DEFAULT ''")
    add_column_if_missing(db, "cursors", "expiry", "INTEGER")  # from before
    add_column_if_missing(db, "deferred", "deferred_ms", "INTEGER")  # from before: no age
    # From before shares: what a file kept waits with strangers'.
    add_column_if_missing(db, "deferred", "friends", "INTEGER NOT NULL DEFAULT 0")
    return db


#: Friend requests a device keeps waiting for its user's answer at most.
PENDING_CONTACTS = 100
#: Senders whose mailbox access a device keeps at most (the last to send a newer one).
KEPT_ACCESSES = 4096
#: How long a device keeps an inbound record it cannot decide on yet (waiting for a
#: sibling's record, or the file server), and how many and how many bytes at most in
#: each share (friends' and strangers', :meth:`DeviceStore.defer`).
DEFERRED_FOR_MS = 86_400_000
DEFERRED_RECORDS = 1000
DEFERRED_BYTES = 16 * 1024 * 1024


class DeviceStore:
    """A device's durable state. One process at a time: two that sent, filed and
    acknowledged from one store would each act on what the other half did (say, delete
    a swarm copy the other still needs), so the store holds the lock on ``<path>.lock``
    while it is open (:class:`~p2psync.process_lock.InUse` for a second one).

    Being the only writer, it keeps what every path check reads (meta values, the
    siblings' overlay keys) in memory, dropped by any write to it; it keeps only what it
    read outside a transaction, so never a value a rollback undid."""

    @staticmethod
    def in_use(path: str | Path) -> bool:
        """Whether a process has the store at ``path`` open now (holds its lock)."""
        return ProcessLock.held(f"{path}.lock")

    @staticmethod
    def holder(path: str | Path) -> str:
        """Which process holds the store at ``path``, for a refusal to name."""
        return ProcessLock.holder(f"{path}.lock")

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """The store at ``path``, held; or, ``read_only``, read beside whichever process
        holds it (no lock taken, so never in a ``run``'s way; any write fails)."""
        self.path = str(path)
        self._lock = None if read_only else ProcessLock(f"{self.path}.lock")
        try:
            self._db = open_read_only(path) if read_only else _open_for_writing(path)
        except BaseException:
            self._release()
            raise
        self._meta: dict[str, bytes | None] = {}
        self._sibling_keys: dict[str, bytes] | None = None

    def close(self) -> None:
        self._db.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()

    def transaction(self) -> AbstractContextManager[None]:
        return transaction(self._db)

    # --- meta -----------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        if key in self._meta:
            return self._meta[key]
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        value = None if row is None else bytes(row[0])
        if not self._db.in_transaction:
            self._meta[key] = value
        return value

    def set_meta(self, key: str, value: bytes) -> None:
        self._meta.pop(key, None)
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def delete_meta(self, key: str) -> None:
        self._meta.pop(key, None)
        self._db.execute("DELETE FROM meta WHERE key = ?", (key,))

    # --- history --------------------------------------------------------------------------

    def add_message(
        self,
        digest: bytes,
        timestamp_ms: int,
        conversation: str,
        outgoing: bool,
        sender: str,
        device: str,
        text: str,
    ) -> bool:
        """Insert unless the id is known; True if it was new."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO messages"
            " (id, timestamp_ms, conversation, outgoing, sender, device, text)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (digest, timestamp_ms, conversation, int(outgoing), sender, device, text),
        )
        return cursor.rowcount == 1

    def received_from(self, user: str) -> int:
        """How many messages from ``user`` the history holds."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM messages WHERE conversation = ? AND NOT outgoing", (user,)
        ).fetchone()
        return int(row[0])

    def filed_as_received(self, digest: bytes) -> bool:
        """Whether the history holds a message received under ``digest``."""
        row = self._db.execute("SELECT outgoing FROM messages WHERE id = ?", (digest,)).fetchone()
        return row is not None and not row[0]

    def forget_message(self, digest: bytes) -> None:
        self._db.execute("DELETE FROM messages WHERE id = ?", (digest,))

    def has_message(self, digest: bytes) -> bool:
        return (
            self._db.execute("SELECT 1 FROM messages WHERE id = ?", (digest,)).fetchone()
            is not None
        )

    def history(self, conversation: str | None = None, *, after_seq: int = 0) -> list[HistoryItem]:
        """Messages in ``(timestamp_ms, id)`` order, of one conversation or all."""
        if conversation is None:
            rows = self._db.execute(
                f"SELECT {_HISTORY_COLUMNS} FROM messages WHERE seq > ? ORDER BY timestamp_ms, id",
                (after_seq,),
            )
        else:
            rows = self._db.execute(
                f"SELECT {_HISTORY_COLUMNS} FROM messages WHERE conversation = ? AND seq > ?"
                " ORDER BY timestamp_ms, id",
                (conversation, after_seq),
            )
        return [_item(row) for row in rows]

    def index(self, since_ms: int) -> list[tuple[int, bytes]]:
        """``(timestamp_ms, id)`` of every message from ``since_ms`` on: what reconciles."""
        rows = self._db.execute(
            "SELECT timestamp_ms, id FROM messages WHERE timestamp_ms >= ?", (since_ms,)
        )
        return [(r[0], r[1]) for r in rows]

    def message(self, digest: bytes) -> HistoryItem | None:
        row = self._db.execute(
            f"SELECT {_HISTORY_COLUMNS} FROM messages WHERE id = ?", (digest,)
        ).fetchone()
        return None if row is None else _item(row)

    def arrivals(self, after_seq: int) -> list[HistoryItem]:
        """Messages stored after ``after_seq``, in arrival order."""
        rows = self._db.execute(
            f"SELECT {_HISTORY_COLUMNS} FROM messages WHERE seq > ? ORDER BY seq", (after_seq,)
        )
        return [_item(row) for row in rows]

    # --- contacts -------------------------------------------------------------------------

    def contact(self, user: str) -> Contact | None:
        row = self._db.execute(
            "SELECT user, state, devices, note, name FROM contacts WHERE user = ?", (user,)
        ).fetchone()
        if row is None:
            return None
        devices = decode_cbor(row[2])
        assert isinstance(devices, list)
        return Contact(row[0], ContactState(row[1]), tuple(str(d) for d in devices), row[3], row[4])

    def contacts(self) -> list[Contact]:
        users = [row[0] for row in self._db.execute("SELECT user FROM contacts ORDER BY user")]
        return [c for user in users if (c := self.contact(user)) is not None]

    def put_contact(self, contact: Contact) -> None:
        """Keep ``contact``; past :data:`PENDING_CONTACTS` requests waiting for the user,
        the one that waited longest is forgotten, with the messages it came with (a
        request costs a stranger one store: unbounded, they filled the disk and every
        pairing grant). A contact declined or forgotten takes the revocations of its
        devices it sent with it: what strangers' requests carry is bounded as they are."""
        with self.transaction():
            if contact.state == ContactState.DECLINED:
                self._db.execute("DELETE FROM revocations WHERE primary_id = ?", (contact.user,))
            self._db.execute(
                "INSERT OR REPLACE INTO contacts (user, state, devices, note, name)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    contact.user,
                    contact.state,
                    encode_cbor(list(contact.devices)),
                    contact.note,
                    contact.name,
                ),
            )
            if contact.state == ContactState.PENDING:
                forgotten = [
                    row[0]
                    for row in self._db.execute(
                        "SELECT user FROM contacts WHERE state = ? AND rowid NOT IN (SELECT"
                        " rowid FROM contacts WHERE state = ? ORDER BY rowid DESC LIMIT ?)",
                        (ContactState.PENDING, ContactState.PENDING, PENDING_CONTACTS),
                    )
                ]
                for user in forgotten:  # with the messages their requests came with
                    self._db.execute("DELETE FROM contacts WHERE user = ?", (user,))
                    self._db.execute("DELETE FROM revocations WHERE primary_id = ?", (user,))
                    self._db.execute(
                        "DELETE FROM messages WHERE conversation = ? AND NOT outgoing", (user,)
                    )

    # --- outbox ---------------------------------------------------------------------------

    def add_outbox(
        self, kind: str, recipient: str, body: bytes, timestamp_ms: int, message_id: bytes | None
    ) -> int:
        cursor = self._db.execute(
            "INSERT INTO outbox (kind, recipient, body, timestamp_ms, message_id)"
            " VALUES (?, ?, ?, ?, ?)",
            (kind, recipient, body, timestamp_ms, message_id),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def outbox(self) -> list[OutboxEntry]:
        rows = self._db.execute(
            "SELECT seq, kind, recipient, body, timestamp_ms, message_id, expanded FROM outbox"
            " ORDER BY seq"
        )
        return [OutboxEntry(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]

    def add_copies(self, copies: Sequence[Copy]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO outbox_copies (seq, owner, namespace, data) VALUES (?, ?, ?, ?)",
            [(c.seq, c.owner, c.namespace, c.data) for c in copies],
        )

    def expand(self, seq: int, copies: Sequence[Copy]) -> None:
        """Record every further copy of an entry at once, before any of them is stored."""
        with self.transaction():
            self.add_copies(copies)
            self._db.execute("UPDATE outbox SET expanded = 1 WHERE seq = ?", (seq,))
            self._db.execute(
                "DELETE FROM outbox WHERE seq = ?"
                " AND NOT EXISTS (SELECT 1 FROM outbox_copies WHERE seq = ?)",
                (seq, seq),
            )

    def copies(self, seq: int) -> list[Copy]:
        rows = self._db.execute(
            "SELECT seq, owner, namespace, data FROM outbox_copies WHERE seq = ?"
            " ORDER BY owner, namespace",
            (seq,),
        )
        return [Copy(r[0], r[1], r[2], r[3]) for r in rows]

    def copy_stored(self, copy: Copy) -> None:
        """One copy is in its swarm; the entry goes once it is expanded and has none left."""
        with self.transaction():
            self._db.execute(
                "DELETE FROM outbox_copies WHERE seq = ? AND owner = ? AND namespace = ?",
                (copy.seq, copy.owner, copy.namespace),
            )
            self._db.execute(
                "DELETE FROM outbox WHERE seq = ? AND expanded = 1"
                " AND NOT EXISTS (SELECT 1 FROM outbox_copies WHERE seq = ?)",
                (copy.seq, copy.seq),
            )

    # --- inbound messages that could not be checked yet ------------------------------------

    def defer(
        self, digest: bytes, owner: str, namespace: int, data: bytes, now_ms: int, *, friends: bool
    ) -> int:
        """Keep a record to decide again later (one kept already keeps its first time and
        its share); how many records kept went to stay within the bounds: what waited
        :data:`DEFERRED_FOR_MS`, then the oldest past :data:`DEFERRED_RECORDS` or
        :data:`DEFERRED_BYTES` of its share (a stranger's message to a device with
        siblings waits for a record that never comes: unbounded, they filled the disk).
        Records that wait with ``friends`` (:func:`.inbound.waits_with_friends`) have
        bounds of their own, so that strangers' records, however many, never push them
        out."""
        with self.transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO deferred"
                " (hash, owner, namespace, data, deferred_ms, friends) VALUES (?, ?, ?, ?, ?, ?)",
                (digest, owner, namespace, data, now_ms, friends),
            )
            return self.forget_deferred(now_ms)

    def forget_deferred(self, now_ms: int) -> int:
        """Drop what :meth:`defer` keeps no longer; how many went."""
        with self.transaction():
            # Kept by a version that noted no time: from now.
            self._db.execute(
                "UPDATE deferred SET deferred_ms = ? WHERE deferred_ms IS NULL", (now_ms,)
            )
            went = self._db.execute(
                "DELETE FROM deferred WHERE deferred_ms < ?", (now_ms - DEFERRED_FOR_MS,)
            ).rowcount
            went += self._db.execute(
                "DELETE FROM deferred WHERE rowid IN (SELECT rowid FROM (SELECT rowid,"
                " COUNT(*) OVER newest AS records, SUM(LENGTH(data)) OVER newest AS bytes"
                " FROM deferred WINDOW newest AS (PARTITION BY friends ORDER BY rowid DESC))"
                " WHERE records > ? OR bytes > ?)",
                (DEFERRED_RECORDS, DEFERRED_BYTES),
            ).rowcount
        return went

    def deferred(self) -> list[tuple[bytes, str, int, bytes]]:
        rows = self._db.execute("SELECT hash, owner, namespace, data FROM deferred ORDER BY rowid")
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def undefer(self, digest: bytes) -> None:
        self._db.execute("DELETE FROM deferred WHERE hash = ?", (digest,))

    # --- cursors --------------------------------------------------------------------------

    def cursor(self, owner: str, namespace: int) -> Cursor:
        """Where this device is in one of its streams (its last message and when that
        expires; nothing read yet: an empty cursor)."""
        row = self._db.execute(
            "SELECT last_hash, expiry FROM cursors WHERE owner = ? AND namespace = ?",
            (owner, namespace),
        ).fetchone()
        return Cursor() if row is None else Cursor(last_hash=row[0], last_expiry_ms=row[1])

    def set_cursor(self, owner: str, namespace: int, message: Message) -> None:
        """The stream's cursor is now after ``message``."""
        self._db.execute(
            "INSERT OR REPLACE INTO cursors (owner, namespace, last_hash, expiry)"
            " VALUES (?, ?, ?, ?)",
            (owner, namespace, message.hash, message.expiry_ms),
        )

    # --- pairing --------------------------------------------------------------------------

    def pairing(self, request_id: bytes) -> Pairing | None:
        row = self._db.execute(
            _SELECT_PAIRINGS + " WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        return None if row is None else _pairing(row)

    def pairings(self, *, incoming: bool, states: Iterable[str]) -> list[Pairing]:
        """This device's pairings (``incoming``: requests it received; else its own) in
        ``states``, oldest request first, and of one time the one written first (a
        pairing is written anew when answered)."""
        wanted = tuple(states)
        rows = self._db.execute(
            _SELECT_PAIRINGS + f" WHERE incoming = ? AND state IN ({', '.join('?' * len(wanted))})"
            " ORDER BY timestamp_ms, rowid",
            (int(incoming), *wanted),
        )
        return [_pairing(r) for r in rows]

    def requests_made_at(self, timestamp_ms: int) -> list[Pairing]:
        """The requests this device received that name ``timestamp_ms`` as their time."""
        rows = self._db.execute(
            _SELECT_PAIRINGS + " WHERE incoming = 1 AND timestamp_ms = ? ORDER BY rowid",
            (timestamp_ms,),
        )
        return [_pairing(r) for r in rows]

    def forget_pairings(self, request_ids: Iterable[bytes]) -> None:
        self._db.executemany(
            "DELETE FROM pairings WHERE request_id = ?", ((r,) for r in request_ids)
        )

    def held_requests(self) -> list[Pairing]:
        """The requests held unanswered, the last to arrive first (not by the date each
        names, which its sender chose)."""
        rows = self._db.execute(
            _SELECT_PAIRINGS + " WHERE incoming = 1 AND state = ? ORDER BY rowid DESC",
            (PairingState.HELD,),
        )
        return [_pairing(r) for r in rows]

    def keep_request(self, pairing: Pairing, *, held: int, before_ms: int) -> None:
        """Keep ``pairing``, a request this device received (answered or held), and forget
        what waits past the bounds (strangers can make requests without end): of those
        held unanswered all but the last ``held`` to arrive, and any made before
        ``before_ms`` that the user never answered."""
        with self.transaction():
            self.put_pairing(pairing)
            self._db.execute(
                "DELETE FROM pairings WHERE incoming = 1 AND state = ? AND rowid NOT IN"
                " (SELECT rowid FROM pairings WHERE incoming = 1 AND state = ?"
                "  ORDER BY rowid DESC LIMIT ?)",
                (PairingState.HELD, PairingState.HELD, held),
            )
            self._db.execute(
                "DELETE FROM pairings WHERE incoming = 1 AND state IN (?, ?) AND timestamp_ms < ?",
                (*WAITING_HERE, before_ms),
            )

    def put_pairing(self, pairing: Pairing) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO pairings"
            " (request_id, incoming, peer, name, timestamp_ms, state, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                pairing.request_id,
                int(pairing.incoming),
                pairing.peer,
                pairing.name,
                pairing.timestamp_ms,
                pairing.state,
                pairing.data,
            ),
        )

    # --- siblings -------------------------------------------------------------------------

    def siblings(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT device, name FROM siblings ORDER BY device"))

    def sibling_overlay_keys(self) -> dict[str, bytes]:
        keys = self._sibling_keys
        if keys is None:
            keys = dict(self._db.execute("SELECT device, overlay FROM siblings ORDER BY device"))
            if not self._db.in_transaction:
                self._sibling_keys = keys
        return dict(keys)

    def add_sibling(self, device: str, name: str, overlay: bytes) -> None:
        """Add a sibling, or rename one known already: its overlay key, which derives
        from its seed, stays the one first heard (a record naming another would take
        the sibling's sessions to whoever holds that key)."""
        self._sibling_keys = None
        self._db.execute(
            "INSERT INTO siblings (device, name, overlay) VALUES (?, ?, ?)"
            " ON CONFLICT (device) DO UPDATE SET name = excluded.name",
            (device, name, overlay),
        )

    def remove_sibling(self, device: str) -> None:
        """Forget a sibling and the sync copies queued for it and not stored yet."""
        self._sibling_keys = None
        with self.transaction():
            self._db.execute("DELETE FROM siblings WHERE device = ?", (device,))
            self._drop_copies_to(device)

    # --- revocations seen (mapped mode) ----------------------------------------------------

    def revocations(self) -> list[Revocation]:
        """Every verified revocation this device has seen: applied to every later file
        server answer, so a server cannot un-revoke a device for us."""
        rows = self._db.execute("SELECT record FROM revocations ORDER BY primary_id, secondary")
        return [Revocation.from_bytes(bytes(row[0])) for row in rows]

    def keep_access(self, owner: str, access: MailboxAccess) -> None:
        """Keep ``owner``'s access to its mailbox (checked by whoever passes it here) if it
        expires later than the one kept; past :data:`KEPT_ACCESSES` owners, the one
        renewed longest ago is forgotten, a friend's or a sibling's only once no
        stranger's is left (any envelope that opens brings its sender's access, so
        strangers' fresh keys could push out the friends' it is kept for)."""
        with self.transaction():
            kept = self._db.execute(
                "SELECT expiry FROM accesses WHERE owner = ?", (owner,)
            ).fetchone()
            if kept is not None and kept[0] >= access.expiry_ms:
                return
            self._db.execute(  # replaced, so last in rowid order
                "INSERT OR REPLACE INTO accesses (owner, expiry, record) VALUES (?, ?, ?)",
                (owner, access.expiry_ms, encode_cbor(access.to_wire())),
            )
            excess = self._db.execute(
                "SELECT COUNT(*) - ? FROM accesses", (KEPT_ACCESSES,)
            ).fetchone()[0]
            if excess > 0:
                self._db.execute(  # strangers' first: theirs cost a stranger one store each
                    "DELETE FROM accesses WHERE rowid IN (SELECT rowid FROM accesses"
                    " ORDER BY owner IN (SELECT user FROM contacts WHERE state = ?)"
                    " OR owner IN (SELECT device FROM siblings), rowid LIMIT ?)",
                    (ContactState.FRIEND, excess),
                )

    def carry_access(self, owner: str, access: MailboxAccess) -> bool:
        """Whether an envelope to ``owner`` is the first to carry our ``access`` (it is
        then noted: the next ones need not; one of another mailbox of ours, before a move
        to ``linked``, does not count). Only the current access's notes are kept."""
        with self.transaction():
            self._db.execute("DELETE FROM accesses_carried WHERE expiry < ?", (access.expiry_ms,))
            noted = self._db.execute(
                "SELECT expiry, signer FROM accesses_carried WHERE owner = ?", (owner,)
            ).fetchone()
            if noted is not None and tuple(noted) == (access.expiry_ms, access.ed25519):
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO accesses_carried (owner, expiry, signer) VALUES (?, ?, ?)",
                (owner, access.expiry_ms, access.ed25519),
            )
            return True

    def access_to(self, owner: str) -> MailboxAccess | None:
        """The access to ``owner``'s mailbox kept last, whether or not it has expired."""
        row = self._db.execute("SELECT record FROM accesses WHERE owner = ?", (owner,)).fetchone()
        if row is None:
            return None
        return MailboxAccess.from_wire(Fields(decode_cbor(bytes(row[0])), "access"))

    def revocations_by(self, primary: str, limit: int) -> list[Revocation]:
        """The newest ``limit`` revocations ``primary`` signed, oldest first."""
        rows = self._db.execute(
            "SELECT record FROM (SELECT record, timestamp, secondary FROM revocations"
            " WHERE primary_id = ? ORDER BY timestamp DESC, secondary DESC LIMIT ?)"
            " ORDER BY timestamp, secondary",
            (primary, limit),
        )
        return [Revocation.from_bytes(bytes(row[0])) for row in rows]

    def revoked_at_ms(self, primary: str, secondary: str) -> int | None:
        """When ``primary`` revoked ``secondary`` (its newest revocation seen), if it did."""
        row = self._db.execute(
            "SELECT timestamp FROM revocations WHERE primary_id = ? AND secondary = ?",
            (primary, secondary),
        ).fetchone()
        return None if row is None else int(row[0])

    def keep_revocations(self, revocations: Sequence[Revocation], *, own_user: str) -> None:
        """Remember verified revocations, the newest per pair; a revocation new here also
        drops the outbox's copies for the revoked device that are not stored yet (queued
        before it, they would still reach a stolen device's swarm), of what was sent to
        the revoking user only: anyone may sign a revocation naming any device, and one
        signed by a friend must not cancel what goes to someone else; one ``own_user``
        signed (our primary's, of a sibling) drops the sync copies for that sibling of
        whatever was sent, as :meth:`remove_sibling` does."""
        with self.transaction():
            for revocation in revocations:
                kept = self._db.execute(
                    "INSERT INTO revocations (primary_id, secondary, timestamp, record)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (primary_id, secondary) DO UPDATE SET"
                    " timestamp = excluded.timestamp, record = excluded.record"
                    " WHERE excluded.timestamp > revocations.timestamp",
                    (
                        revocation.primary,
                        revocation.secondary,
                        revocation.timestamp_ms,
                        revocation.to_bytes(),
                    ),
                ).rowcount
                if kept:
                    ours = revocation.primary == own_user
                    self._drop_copies_to(
                        revocation.secondary, sent_to=None if ours else revocation.primary
                    )
                    self._db.execute(  # each user's newest 256 (as many as a server lists)
                        "DELETE FROM revocations WHERE primary_id = ? AND secondary NOT IN"
                        " (SELECT secondary FROM revocations WHERE primary_id = ?"
                        "  ORDER BY timestamp DESC LIMIT ?)",
                        (revocation.primary, revocation.primary, MAX_LISTED_REVOCATIONS),
                    )

    def drop_outbox(self) -> None:
        """Forget everything queued and not stored yet (a device unpaired by its primary:
        whoever it went to would refuse it)."""
        with self.transaction():
            self._db.execute("DELETE FROM outbox_copies")
            self._db.execute("DELETE FROM outbox")

    def _drop_copies_to(self, owner: str, *, sent_to: str | None = None) -> None:
        """Drop the copies for ``owner`` not stored yet (of what was sent to the user
        ``sent_to`` only, if named), and the entries that have none left."""
        if sent_to is None:
            self._db.execute("DELETE FROM outbox_copies WHERE owner = ?", (owner,))
        else:
            self._db.execute(
                "DELETE FROM outbox_copies WHERE owner = ?"
                " AND seq IN (SELECT seq FROM outbox WHERE recipient = ?)",
                (owner, sent_to),
            )
        self._db.execute(
            "DELETE FROM outbox WHERE expanded = 1"
            " AND NOT EXISTS (SELECT 1 FROM outbox_copies WHERE outbox_copies.seq = outbox.seq)"
        )

    # --- live sync with siblings -----------------------------------------------------------

    def add_pending(
        self,
        digest: bytes,
        published_ms: int,
        body: bytes,
        inbound: bool,
        relayed_from: str | None = None,
    ) -> None:
        """A message some sibling has yet to acknowledge (kept across restarts)."""
        self._db.execute(
            "INSERT OR IGNORE INTO sync_pending (id, published_ms, body, inbound, relayed_from)"
            " VALUES (?, ?, ?, ?, ?)",
            (digest, published_ms, body, int(inbound), relayed_from),
        )

    def pending(self, digest: bytes | None = None) -> list[Pending]:
        """Every pending message, oldest first (or only ``digest``, if pending)."""
        where, args = ("WHERE id = ?", (digest,)) if digest is not None else ("", ())
        rows = self._db.execute(
            "SELECT id, published_ms, body, inbound, fell_back, relayed_from FROM sync_pending "
            + where
            + " ORDER BY published_ms, id",
            args,
        )
        return [Pending(r[0], r[1], r[2], bool(r[3]), bool(r[4]), r[5]) for r in rows]

    def fell_back(self, digest: bytes, copies: Sequence[Copy]) -> None:
        """The message's sync copies are queued: remember them, to delete them later."""
        self._db.execute("UPDATE sync_pending SET fell_back = 1 WHERE id = ?", (digest,))
        self._db.executemany(
            "INSERT OR IGNORE INTO sync_copies (id, owner, namespace, hash) VALUES (?, ?, ?, ?)",
            [(digest, c.owner, c.namespace, message_hash(c.data)) for c in copies],
        )

    def acknowledged(self, digest: bytes, deletable: Sequence[tuple[str, int, bytes]]) -> None:
        """Every sibling holds the message: forget it, and queue ``deletable`` copies plus
        its sync copies in ``owner``'s swarms for deletion (inside a transaction)."""
        copies = self._db.execute(
            "SELECT owner, namespace, hash FROM sync_copies WHERE id = ?", (digest,)
        ).fetchall()
        self.queue_deletions([*deletable, *((r[0], r[1], r[2]) for r in copies)])
        self._db.execute("DELETE FROM sync_copies WHERE id = ?", (digest,))
        self._db.execute("DELETE FROM sync_pending WHERE id = ?", (digest,))

    def queue_deletions(self, targets: Sequence[tuple[str, int, bytes]]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO deletions (owner, namespace, hash) VALUES (?, ?, ?)", targets
        )

    def deletions(self) -> list[tuple[str, int, bytes]]:
        rows = self._db.execute("SELECT owner, namespace, hash FROM deletions ORDER BY rowid")
        return [(r[0], r[1], r[2]) for r in rows]

    def deleted(self, owner: str, namespace: int, digest: bytes) -> None:
        self._db.execute(
            "DELETE FROM deletions WHERE owner = ? AND namespace = ? AND hash = ?",
            (owner, namespace, digest),
        )
