"""A blocking facade over the asyncio client, for scripts and sync code.

``SyncClient`` runs a private event loop in a daemon thread and forwards each
call to the asyncio ``Client`` there, so calls from several threads share one
pipelined connection. Every method takes the same arguments as the asyncio
one and has the same timeout.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any, Callable

from .client import Client


class SyncClient:
    """Blocking Reckon client: ``SyncClient(host, port, credential).balance(1000)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="reckon-client",
                                        daemon=True)
        self._thread.start()
        self._client: Client = self._run(self._make(*args, **kwargs))

    @staticmethod
    async def _make(*args: Any, **kwargs: Any) -> Client:
        return Client(*args, **kwargs)

    def _run(self, coro: Any) -> Any:
        if threading.current_thread() is self._thread:
            raise RuntimeError("SyncClient called from its own event loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def client(self) -> Client:
        """The asyncio client underneath."""
        return self._client

    @property
    def hello(self) -> Any:
        """The HELLO_OK of the current connection, if connected."""
        return self._client.hello

    def close(self) -> None:
        """Closes the connection and stops the loop thread."""
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> "SyncClient":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _forward(name: str) -> Callable[..., Any]:
    method = getattr(Client, name)

    @functools.wraps(method)
    def call(self: SyncClient, *args: Any, **kwargs: Any) -> Any:
        return self._run(getattr(self._client, name)(*args, **kwargs))

    return call


for _name in ("connect", "request", "batch", "ping", "ccr", "initial", "update", "terminate",
              "event", "check_balance", "price", "admin", "create_account", "set_status",
              "topup", "adjust", "grant_bucket", "set_limit", "balance", "reservations",
              "apply_ratecard", "ratecards"):
    setattr(SyncClient, _name, _forward(_name))
