"""Open groups (public chats, DESIGN.md §5): rooms of posts that each device signs with its
own key, shown as coming from one *user* whichever device sent them.

RPC methods (CBOR framing of :mod:`p2psync.rpc`):

* ``create_room`` ``{"room": text, "key": bytes32, "ts": uint, "sig": bytes64}`` →
  ``{"room": text, "created": bool}`` (idempotent), signed by its creator (below)
* ``list_rooms`` ``{}`` → ``{"rooms": [text]}``
* ``post`` ``{"room": text, "post": bytes}`` → ``{"id": uint, "user": text}``
* ``messages`` ``{"room": text, "since": uint, "limit": uint?}`` →
  ``{"messages": [{"id", "user", "device", "timestamp", "body", "post"}], "more": bool}``,
  posts with ids above ``since`` in id order; ``post`` is the signed post itself, so a
  reader need not take the server's word for any of it (:meth:`RoomMessage.check`).

A post (canonical CBOR) is ``{"v": 1, "room": text, "sender": sid, "key": bytes32,
"primary": sid?, "ts": uint, "body": bytes, "sig": bytes64}``: the Ed25519 signature, under
its own domain prefix, covers every other field, the room included, so a post cannot be
moved to another room. ``primary`` is the user the device claims to belong to (absent: no
claim).

Attribution. With a file server (``mapped`` mode) the user is the primary that the sending
device is mapped to, looked up on the file server and checked against the signed mappings
it returns (:class:`~p2psync.fileserver.client.FileServerClient`). Without one (``linked`` mode)
every device of a user signs with the shared key, so the user is the sender itself. Either
way a device with no mapping is a single-device user, attributed to its own id. Refused as
``unauthorized``: a signature that does not verify, a key that is not the sender's, and a
claimed primary the sender is not mapped to. The attribution is decided once, when the post
arrives, and stored with it: a later revocation does not rewrite history.

Readers check every message against its signed post and drop (with a warning) one that
does not match: a server can withhold posts but not invent or alter them. Attribution to a
user other than the device is the device's own signed claim when it made one
(``RoomMessage.claimed``); an unclaimed ``mapped`` attribution is the server's word, checked
against the file server's signed mappings by anyone who asks it.

Posts are deduplicated by the hash of the signed record, so a retried (or replayed) post
returns its original id instead of appearing twice; its timestamp must be within ±60 s of
the server clock, so nobody back-dates a post.

Room creation. Rooms last for ever and a server holds at most ``max_rooms`` of them, so
creating one is rationed: the request is signed by its creator's Ed25519 key (over
:data:`ROOM_DOMAIN`, the room and a timestamp within ±60 s, so nobody spends another key's
allowance) and each key may create :data:`ROOMS_PER_KEY` rooms at once, then one per
:data:`ROOM_KEY_REFILL_S`; all keys together :data:`ROOMS_BURST`, then one per
:data:`ROOM_REFILL_S`. Beyond that: ``rate_limited``; beyond ``max_rooms``: ``too_large``.
Keys cost nothing to make, so it is the total that keeps a flood from filling the server in
seconds (it now takes days); the per-key allowance keeps one key from spending the total.
Days is still not never: a stranger can spend the total for as long as it likes and fill
the server's rooms for good. A server strangers reach therefore lists the session ids
whose keys may create rooms (``room_creators``; ``p2psync opengroup --room-creator ID``,
as Session's open-group servers have their operators make rooms): any other key is
refused ``unauthorized``. Without a list (a local network, the demo) every key may.
Asking for a room that exists is answered ``created: false`` and costs nothing.

Posting. Device keys cost nothing to make either, and rooms keep posts, so posting is
rationed and what a room keeps is bounded: each key may make :data:`POSTS_PER_KEY` posts
at once, then one per :data:`POST_KEY_REFILL_S`; each room takes :data:`ROOM_POSTS_BURST`,
then one per :data:`ROOM_POST_REFILL_S`, so a flood of one room leaves the others; and
all keys together :data:`POSTS_BURST`, then one per :data:`POST_REFILL_S`
(``rate_limited`` beyond, checked after the post's signature, so nobody spends another
key's allowance, and before the file server is asked); a repeated post costs nothing.
A room keeps the newest :data:`ROOM_MAX_BYTES` of its posts and lets the oldest go, so a
server holds at most ``max_rooms`` times that however much is posted (a flood can push a
room's history out, not fill the disk). A post counts for what its row takes on disk, ids,
hash and indexes included (:data:`~.store.POST_ROW_BYTES`), so that bound is the disk's.

Every integer a request carries is range-checked when it is decoded (``bad_request``):
times up to :data:`~p2psync.envelope.MAX_TIMESTAMP_MS`, anything else within SQLite's
signed 64 bits (:meth:`~p2psync.wire.Fields.uint`).

The modules: :mod:`.posts` (the signed post, the room request and what a reader checks,
pure), :mod:`.store` (rooms and attributed posts in SQLite), :mod:`.server` and
:mod:`.client`.
"""
