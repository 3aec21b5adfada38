"""CBOR RPC over any :class:`overlay.link.Transport` (DESIGN.md §4 framing).

Server: :meth:`RpcServer.serve` accepts connections and reads frames. A plain-function
handler (one that never waits) is answered inline in the connection's read loop; a
coroutine handler runs as its own task so requests pipeline, and a plain-function
handler whose work other tasks finish answers with a :class:`Later` (no task per
request): at most ``max_in_flight`` such requests per connection at once (tasks and
Laters together; the one read to find them all taken is handled already), after which
the server stops reading that connection (backpressure instead of an unbounded queue).
The read loop takes every frame one read brought and sends their inline replies
together: on a busy node task switches and write syscalls per request, not the work
itself, are what limit throughput. Replies of tasks and pushes leave through one
:class:`Outbox` per connection, bounded in frames and in bytes; a task keeps its
in-flight slot until its reply is in the outbox, so a client that sends without reading
its replies is soon not read either (its own sends back up into its socket). What all
connections hold for their peers together is bounded too (:class:`ReplyMemory`): past
that, the connection holding the most is dropped, so many such clients cannot add up to
more. A frame that does not decode gets ``bad_request`` and the connection goes on; a
handler that fails gets ``internal`` and the server goes on; a client too slow to take
its pushes is disconnected (it resubscribes and catches up by ``last_hash``, so nothing
is lost).

Client: ``async with open_rpc(transport, address) as client`` gives
``await client.call(method, params)`` (pipelined, matched by id) and
``client.notifications`` for pushes."""

from .client import (
    Params,
    RpcCaller,
    RpcClient,
    RpcPool,
    RpcRouter,
    made,
    open_rpc,
    open_rpc_pool,
    result_of,
)
from .later import Later
from .limits import KeyedRateLimit, ReplyMemory, ServerLimits, ServerStats, TokenBucket
from .outbox import Connection, Outbox
from .server import Cost, Handler, Observer, RpcServer, refusal_of

__all__ = [
    "Connection",
    "Cost",
    "Handler",
    "KeyedRateLimit",
    "Later",
    "Observer",
    "Outbox",
    "Params",
    "ReplyMemory",
    "RpcCaller",
    "RpcClient",
    "RpcPool",
    "RpcRouter",
    "RpcServer",
    "ServerLimits",
    "ServerStats",
    "TokenBucket",
    "made",
    "open_rpc",
    "open_rpc_pool",
    "refusal_of",
    "result_of",
]
