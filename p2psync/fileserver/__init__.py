"""The file server (DESIGN.md §5): where v1.5.0 devices publish their device mappings and
where senders and open groups look up which devices make up a user.

RPC methods (CBOR framing of :mod:`p2psync.rpc`):

* ``put_mapping`` ``{"mapping": bytes}`` → ``{}``
* ``get_mappings`` ``{"session_id": text}`` → ``{"primary": text, "secondaries": [text],
  "mappings": [bytes], "revocations": [bytes]}`` for any device of a user; a device without
  a mapping is its own primary with no secondaries. ``revocations`` are the primary's
  newest revocation per revoked secondary, which readers keep (see :mod:`.mapping`).
* ``revoke_mapping`` ``{"revocation": bytes}`` → ``{}``

Refusals: ``bad_request`` (malformed), ``unauthorized`` (a signature or key does not verify,
or the mapping was revoked at or after its timestamp), ``clock_skew`` (a revocation
timestamp more than ±60 s from the server clock; a mapping signed more than
:data:`~p2psync.mapping.PAIRING_WINDOW_MS` (10 min) ago or more than 60 s ahead: its
timestamp is the secondary's request, and the user may take minutes to compare codes and
accept; re-putting the mapping already stored and active is always accepted),
``conflict`` (the secondary belongs to another primary, a device would be primary and
secondary at once, the primary is at its secondary limit, or a newer record exists),
``not_found`` (revoking an unknown pairing), ``rate_limited`` (a primary's mappings past
its share, or all primaries' past the server's, :mod:`.server`).

Revocations are kept: a pair's row remembers the newest revocation timestamp, and a
mapping signed at or before it is refused forever, so a captured mapping cannot be
replayed to re-pair a device the user removed. A genuinely new pairing (signed later)
works again.

The store is SQLite (WAL), queried inline in the Trio thread: queries are short, and a
single thread gives each request's checks and write one atomic view without locks.

The modules: :mod:`.rules` (what the server refuses of a mapping or a revocation, decided
without I/O), :mod:`.store` (the pairs in SQLite, which asks the rules), :mod:`.server`
and :mod:`.client`.
"""
