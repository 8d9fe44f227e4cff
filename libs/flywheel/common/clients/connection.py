"""How a client reaches a service: a channel per use (simple; a restarted server is reached again at
once), or one channel and stub kept open for a hot path (then `close` it)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Self, TypeVar

from flywheel.common import rpc

Stub = TypeVar("Stub")


class Connection(Generic[Stub]):
    def __init__(self, address: str, make_stub: Callable[[rpc.Channel], Stub], *,
                 auth: rpc.ClientAuth | None, default_timeout: float, keep_open: bool = False) -> None:
        self.address = address
        self.make_stub = make_stub
        self.auth = auth
        self.default_timeout = default_timeout
        self.keep_open = keep_open
        self._channel: rpc.Channel | None = None
        self._stub: Stub | None = None

    @contextlib.asynccontextmanager
    async def stub(self) -> AsyncIterator[Stub]:
        """A stub on a channel that stays open while the block runs (a streamed call is read inside it)."""
        if self.keep_open:
            if self._stub is None:
                self._channel = rpc.channel(self.address, default_timeout=self.default_timeout, auth=self.auth)
                self._stub = self.make_stub(self._channel)
            yield self._stub
            return
        async with rpc.channel(self.address, default_timeout=self.default_timeout, auth=self.auth) as channel:
            yield self.make_stub(channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None


class ServiceClient:
    """What every client shares: it owns its connection, `close` releases it, `async with` closes it."""

    _connection: Connection[Any]

    async def close(self) -> None:
        await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
