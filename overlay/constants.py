"""Every number of the overlay, with its unit in its name, in one place (DESIGN.md §6)."""

from __future__ import annotations

#: Every link message (build, data, relay-to-relay) has exactly this size, so an observer
#: of a link cannot tell message kinds or plaintext sizes apart by length.
CELL_BYTES = 1400
#: Cell header: kind (1 byte) + per-link path id (16 bytes).
CELL_HEADER_BYTES = 17
CELL_BODY_BYTES = CELL_BYTES - CELL_HEADER_BYTES
PATH_ID_BYTES = 16

#: Path lengths an endpoint may ask for; the build message always has MAX_HOPS frames.
DEFAULT_HOPS = 3
MIN_HOPS = 1
MAX_HOPS = 8
#: Per-hop layer overhead: 8-byte counter tag (a keyed hash of the counter, never the
#: counter itself) + 16-byte Poly1305 tag.
LAYER_OVERHEAD_BYTES = 24
#: How many counters past the expected one a hop recognises, to tell cells lost on the
#: way (the path is broken: torn down) from replays and junk (dropped, the path lives on).
#: A burst of more losses than this reads as junk too; the owner then finds the path dead
#: by its unanswered pings. Junk costs a hop this many 8-byte comparisons, no hashing.
LAYER_GAP_WINDOW = 32
#: What reaches the terminal hop whatever the path length (hides length from the endpoint's
#: payload format; the terminal sees at least this much).
TERMINAL_PAYLOAD_BYTES = CELL_BODY_BYTES - MAX_HOPS * LAYER_OVERHEAD_BYTES

#: One sealed build record per hop: ephemeral X25519 key + AEAD(record) with its tag.
BUILD_RECORD_PLAINTEXT_BYTES = 96
BUILD_FRAME_BYTES = 32 + BUILD_RECORD_PLAINTEXT_BYTES + 16
BUILD_FRAMES = MAX_HOPS

DEFAULT_PATH_LIFETIME_MS = 10 * 60 * 1000
#: Longest path a relay agrees to carry (Lokinet keeps paths 20 min): a hop whose build
#: record names a later expiry is refused, so nobody can pin relay state for ever.
MAX_PATH_LIFETIME_MS = 30 * 60 * 1000
#: How far a builder's clock may run ahead of a relay's before its builds are refused
#: for expiring too late (the same allowance as signed requests to service nodes).
CLOCK_SKEW_ALLOWANCE_MS = 60 * 1000
#: Rebuild this long before expiry so traffic never waits for a build.
PATH_REBUILD_MARGIN_MS = 60 * 1000
DEFAULT_PATHS_PER_ENDPOINT = 2
PATH_BUILD_TIMEOUT_MS = 2_000
PATH_PING_INTERVAL_MS = 5_000
#: A path whose terminal hop has not answered a ping for this long is dead.
PATH_PING_TIMEOUT_MS = 3_000

CONTACT_LIFETIME_MS = 24 * 60 * 60 * 1000

INTROSET_REPLICAS = 4
INTROSET_LIFETIME_MS = 20 * 60 * 1000
INTROSET_REPUBLISH_MS = 150 * 1000
INTROSET_MAX_BYTES = 1024
#: Introsets one relay holds at most: 16 Ki × INTROSET_MAX_BYTES bounds the store at 16 MiB,
#: about four introsets for every endpoint of a network of 16 000 endpoints and as many
#: relays (each introset lives on INTROSET_REPLICAS of them). Past it, PUTs for new
#: locations are refused (FULL) until some expire.
INTROSET_STORE_MAX = 16 * 1024
#: Introsets that one link (one neighbour relay, or one directly connected endpoint) may
#: have stored at once: a sixteenth of the store, so one peer flooding PUTs fills its own
#: share and gets FULL while every other link is still served.
INTROSET_STORE_PER_LINK_MAX = INTROSET_STORE_MAX // 16
#: Intros per introset (the freshest paths); 4 keep it well under INTROSET_MAX_BYTES.
INTROSET_MAX_INTROS = 4
#: Blinded rendezvous keys rotate once per epoch; lookups try this epoch and the last.
RENDEZVOUS_EPOCH_MS = 24 * 60 * 60 * 1000
DHT_REQUEST_TIMEOUT_MS = 2_000
#: DHT requests a relay forwards for its paths and keeps awaiting answers to, at most. Each
#: is kept only while its endpoint waits (DHT_REQUEST_TIMEOUT_MS), so the cap matters only
#: under a flood or a neighbour that never answers: past it the oldest is forgotten, which
#: takes over 2 000 forwarded requests a second, and costs a few hundred bytes an entry.
DHT_PENDING_MAX = 4096
#: A DHT request lost on the way (cells can be) is retried this many times in all.
DHT_ATTEMPTS = 3

#: Largest message a session carries (fragmented into cells).
MAX_SESSION_MESSAGE_BYTES = 256 * 1024
#: What a session keeps received and not yet read: past it, it takes (and acknowledges)
#: nothing more until its application reads, so a peer cannot make it hold more.
SESSION_UNREAD_BYTES = 2 * MAX_SESSION_MESSAGE_BYTES
#: Flow control: at most this many unacknowledged fragments in flight per direction.
SESSION_WINDOW_FRAGMENTS = 64
SESSION_RTO_INITIAL_MS = 1_000
SESSION_RTO_MIN_MS = 200
SESSION_RTO_MAX_MS = 8_000
SESSION_HANDSHAKE_TIMEOUT_MS = 5_000
#: A responder refuses an INIT sent further than this from its own clock (either way): it
#: is a replay, or the clocks disagree by more than introset expiries already tolerate.
SESSION_INIT_FRESHNESS_MS = 2 * 60 * 1000
#: Fresh INITs an endpoint remembers to refuse their replays; past it, the ones going stale
#: first are forgotten first (a replay of one of those can still open a session).
SESSION_INIT_REPLAY_ENTRIES = 4096
#: Give up on a peer after this many retransmissions of one fragment.
SESSION_MAX_RETRIES = 12
#: A fragment retransmitted this many times makes the endpoint look the peer's introset
#: up again (its intro may have died with a relay), at most once per the interval below.
SESSION_STALL_RETRIES = 3
#: A FIN answering the peer's is sent this many times (backing off) and then the session
#: closes whether or not it was acknowledged: the peer may have left. More than
#: SESSION_STALL_RETRIES, so a peer that only moved is looked up again first.
SESSION_LAST_FIN_SENDS = SESSION_STALL_RETRIES + 3
#: A side whose FIN was acknowledged gives the session up once the peer, which has not
#: sent its own FIN, has been silent this long. Longer than the widest gap between two
#: retransmissions (the RTO backs off 16-fold), so a live peer resending is still heard.
SESSION_HALF_CLOSED_IDLE_MS = 3 * 60 * 1000
SESSION_INTRO_REFRESH_MS = 5_000

#: Outgoing queue per link in a driver; a full queue drops cells like a router would.
LINK_QUEUE_CELLS = 512
#: How often an endpoint checks its paths (expiry, dead hops, pings).
PATH_CHECK_INTERVAL_MS = 500
#: Sessions an endpoint queues for ``sessions()`` before refusing new ones.
ACCEPT_QUEUE_SESSIONS = 16
#: Sessions an endpoint keeps open at once, and with any one peer (two for a moment
#: while a new one replaces the old): past them an INIT opens nothing.
MAX_OPEN_SESSIONS = 256
MAX_SESSIONS_PER_PEER = 4

#: Hops a relay keeps at once (:mod:`overlay.transit`): some 100 MiB of path state, the
#: paths of tens of thousands of endpoints on one relay.
TRANSIT_HOPS_MAX = 65_536
#: Builds a relay remembers at once against replay (each until its path's expiry).
TRANSIT_BUILDS_MAX = 2 * TRANSIT_HOPS_MAX
#: One host (a neighbour relay, or an endpoint connected directly) may have this part of
#: each: a sixteenth, so one that floods builds fills its own share and no one else's.
TRANSIT_SHARE_PER_HOST = 16
#: Of a host's hops, the part that may go on to any one next relay: a quarter, so one
#: host needs four to fill this relay's share at the next one (which counts all of this
#: relay's paths as one host's).
TRANSIT_ONWARD_SHARE = 4

#: Exit requests (onion requests to servers, DESIGN.md §6): the largest request or reply
#: a path carries to or from its exit hop, reassembled from fragments (a server's largest
#: frame, 128 KiB, plus room for the address and the sealing).
EXIT_MAX_MESSAGE_BYTES = 136 * 1024
#: How long an exit hop waits for a server before answering the owner with a failure;
#: also how long it keeps a request whose fragments stopped coming.
EXIT_TIMEOUT_MS = 10_000
#: Exit requests in a row a path's exit leaves with no answer at all before the endpoint
#: retires the path (an exit reports a server it cannot reach: that is an answer).
EXIT_UNANSWERED_TO_RETIRE = 2
#: An endpoint that publishes an introset tests one of its own intros end to end within
#: this many path-ping intervals (15 s at the default pings; at a random point of the
#: second half): a probe, shaped as a session packet, sent to the intro through another
#: of its paths. A relay
#: that answers its path's pings and keeps what it should deliver to the intro it hosts
#: looks healthy to pings alone, while every packet its siblings send there is lost.
INTRO_PROBE_PINGS = 3
#: How long a probe has to come back before it counts as unanswered (a round trip is two
#: paths and one hop between relays; a ping's time-out covers one path).
INTRO_PROBE_TIMEOUT_MS = 5_000
#: Probes in a row an intro leaves unanswered before its path is retired (the second is
#: sent as soon as the first times out, through the next of the other paths).
INTRO_PROBES_UNANSWERED_TO_RETIRE = 2
#: Paths retired for their intros at most, per path lifetime: a relay that keeps probes
#: alone (or the terminal of the path probes leave by) cannot make the endpoint replace
#: its paths more often than that.
INTRO_RETIREMENTS_PER_LIFETIME = 2
#: How long the terminal of a path retired for keeping what it should pass on is left out
#: as the terminal of new paths (while others will do): long enough that a relay that
#: withholds is seldom chosen again, not for good, as an honest relay can be framed (a
#: terminal whose outgoing transfers stalled, or a probe another relay kept) and is then
#: never a terminal again, so nothing it passes on could clear it.
WITHHOLDING_AVOIDED_MS = 30 * 60 * 1000
#: Exit requests one path may have under way at once (reassembling or at the server);
#: past it a new one is refused, so one owner cannot take a relay's whole share.
EXIT_MAX_PER_PATH = 8
#: Exit requests the paths that came in from one host (an IPv6 /64) may have under way at
#: once: a quarter of EXIT_MAX_TOTAL, so a client must come in from four machines (or by
#: four relays) to hold every slot.
EXIT_MAX_PER_HOST = 64
#: Exit requests a relay has under way at once over all its paths: with
#: EXIT_MAX_MESSAGE_BYTES, bounds what reassembly and replies can hold at 34 MiB.
EXIT_MAX_TOTAL = 256
