"""Onion requests: a device reaches a server through one of its own overlay paths, so no
server sees the device's address (DESIGN.md §6, issue 17).

The path's exit relay hands the request to the server and carries the answer back; it
sees the server's address but not the request, which is sealed end-to-end to the server's
X25519 key (converted from the Ed25519 key the server announces) with a fresh ephemeral
key per request (libsodium's sealed box). Inside: the time it was sealed, a fresh reply
key, and the RPC request frame as it would travel on a direct connection; the server
answers with the reply frame under the reply key (secretbox). Relays on the path see only
cells, as for any payload.

* Server side: :class:`~.service.OnionService` adds the ``onion`` method to any :class:`RpcServer`
  (storage node, file server, open group server). The inner request goes through the
  server's own dispatch (:meth:`RpcServer.answer`), so it keeps its own signatures and
  authorisation is unchanged. Sealed bodies that do not open, are stale or were seen
  before are refused and counted (:class:`~.service.OnionStats`). Onion requests are not charged
  to the connection's rate bucket but to the exit's share (:class:`~.service.OnionShare`): one
  exit carries many clients, whom the server cannot tell apart (that is the point), so
  the server is fair between exits and each exit between the paths and links its
  requests come by (:class:`overlay.exits.ExitCaps`).
* Relay side: :class:`~.exit.RpcExit` is the :class:`overlay.relay.Exit` an overlay relay is
  given: it calls ``onion`` from the relay's own host, only on the servers of
  :class:`~.addresses.ExitServers` (the listing's service nodes, the file server and the open group
  server, each however its address is spelled: :func:`~.addresses.server_address`), over at most
  ``EXIT_MAX_CONNECTIONS`` connections (:class:`~.exit.ExitConnections`). An exit that reached
  any address a request named would be a port scanner of its own host's network.
* Client side: :class:`~.pool.OnionRpcPool` has the call interface of :class:`RpcPool` (``call``,
  ``get``, ``transport``), on an overlay :class:`~overlay.endpoint.Endpoint`: each request
  goes on the endpoint's next path in turn, and one that gets no answer in time, or a
  failure from its exit, is sealed afresh and sent on another path.

Pushes (``subscribe``) need a connection of their own and do not travel on paths, so an
onion pool offers none (its ``transport`` is ``None``): a device on onion requests polls
through its paths, and one configured to subscribe is refused at open rather than given
a direct connection that would show the node its address and account.

The modules: :mod:`.sealing` (the sealed request and its checks) and :mod:`.addresses`
(what tells servers apart, and which ones an exit serves), both pure; :mod:`.service`
(the server side), :mod:`.exit` (the relay side), :mod:`.pool` (the client side) and
:mod:`.directory` (the listing a device reads, and the keys it seals to).
"""
