"""The embedded network's defaults, apart from :mod:`p2psync.network` so that the
command line can show them in its help without importing every server the network runs."""

#: What a local network runs on: WebSocket over loopback sockets, or the emulated network.
TRANSPORTS = ("tcp", "memory")

#: Relays a local network starts unless told otherwise: enough for devices' 3-hop paths
#: and the 4 replicas of an introset, so direct sibling sync is on by default.
DEFAULT_RELAYS = 6
