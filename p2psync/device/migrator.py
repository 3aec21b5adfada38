"""The migration driver: carries out a move from ``mapped`` to ``linked`` mode.

On the primary it reads what its swarm still holds under the ``mapped`` rules, asks the
pure core (:mod:`.migration`) for the plan, revokes the secondaries' mappings on the file
server, and then, in one transaction, queues the hand-overs and the friends' statements
and switches to the ``linked`` rules. On a secondary it adopts the account when the
inbound core accepted the primary's hand-over. Either way the device then receives as
the account and meets its siblings by the secret derived from the account's seed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ..errors import RpcError
from .content import AccountLinked, LinkedHandOver
from .friends import friends_among
from .local import Local
from .migration import (
    BecomeLinked,
    HandOver,
    RevokeMapping,
    TellFriend,
    migration_refusal,
    plan_migration,
)
from .modes import Mode
from .outbox import Outbox
from .siblings import SiblingHandler
from .values import DeviceError


class Migrator:
    """Moves this device's account to ``linked`` mode (see the module docstring)."""

    def __init__(
        self,
        local: Local,
        outbox: Outbox,
        siblings: SiblingHandler,
        sync_now: Callable[[], Awaitable[None]],
        relisten: Callable[[], None],
        decline_ungrantable: Callable[[], Awaitable[None]],
    ) -> None:
        """``sync_now`` files what the swarms hold now; ``relisten`` restarts the receive
        loops (the streams to read changed); ``decline_ungrantable`` tells the mapped
        devices whose pairing requests wait here that they cannot be granted now."""
        self._local = local
        self._store = local.store
        self._outbox = outbox
        self._siblings = siblings
        self._sync_now = sync_now
        self._relisten = relisten
        self._decline_ungrantable = decline_ungrantable
        #: One move at a time: a second, asked for while the first awaits the network,
        #: would pass the same checks and sign a statement of its own.
        self._moving = trio.Lock()

    async def migrate(self, to: str) -> tuple[str, ...]:
        """On the primary: move the account to ``to`` (``linked``); returns the device
        keys retired (the secondaries, which act with the account's key once they read
        the hand-over). A second call while one is under way waits for it, then finds
        the account linked already."""
        async with self._moving:
            return await self._migrate(to)

    async def _migrate(self, to: str) -> tuple[str, ...]:
        local = self._local
        if to != Mode.LINKED:
            raise DeviceError(f"an account moves to linked mode only, not to {to!r}")
        refusal = migration_refusal(local.rules.mode, local.is_primary, local.migration is not None)
        if refusal is not None:
            raise DeviceError(refusal)
        # What siblings stored for us under the mapped rules is read under them.
        await self._sync_now()
        listed = await self._outbox.devices_of(local.user_id, fresh=True)
        secondaries = (set(listed) | set(self._store.siblings())) - {local.device_id}
        friends = friends_among(self._store.contacts())
        now = local.clock.now_ms()
        effects = plan_migration(local.identity, secondaries, friends, now)
        client = await self._outbox.fileserver()
        for effect in effects:
            if isinstance(effect, RevokeMapping):
                try:
                    await client.revoke_mapping(effect.revocation)
                except RpcError as exc:
                    if exc.code != "not_found":  # a sibling the file server never listed
                        raise
        with self._store.transaction():
            for effect in effects:
                match effect:
                    case HandOver(device=device, statement=statement):
                        hand_over = LinkedHandOver(local.identity.seed, statement)
                        local.queue_copies(hand_over, [device], now, None)
                    case TellFriend(user=user, statement=statement):
                        local.queue(AccountLinked(statement), user)
                    case BecomeLinked(statement=statement):
                        local.become_linked(statement, None)
        self._now_linked()
        await self._decline_ungrantable()
        assert local.migration is not None
        return local.migration.retired_devices

    def adopt_account(self, seed: bytes, statement: bytes) -> None:
        """On a secondary: the primary's hand-over checked out; act as the account."""
        with self._store.transaction():
            self._local.become_linked(statement, seed)
        self._now_linked()

    def _now_linked(self) -> None:
        """Receive as the account, from its swarm; meet siblings by its secret; look our
        own devices up again; deliver what was queued."""
        self._outbox.forget(self._local.user_id)
        self._relisten()
        self._siblings.restart()
        self._local.wake_outbox()
        self._local.notify()


__all__ = ["Migrator"]
