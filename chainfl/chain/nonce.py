"""Per-account nonce managers, so many senders in one process never collide.

A node only learns about a nonce once the transaction reaches it, so two threads that both ask the
node for "the next nonce" get the same number. A :class:`NonceManager` hands out consecutive nonces
from a local counter under a lock; it starts from the node's *pending* transaction count and goes
back to it (:meth:`NonceManager.resync`) whenever a send fails, because a failed send may or may not
have consumed its nonce.
"""

from __future__ import annotations

import threading
from typing import Callable


class NonceManager:
    """Thread-safe nonce counter for one account.

    ``fetch()`` returns the node's pending transaction count for the account; it is called lazily on
    first use and after :meth:`resync`.
    """

    def __init__(self, fetch: Callable[[], int]):
        self._fetch = fetch
        self._next: int | None = None
        self.lock = threading.RLock()

    def next(self) -> int:
        """Reserve and return the next nonce."""
        with self.lock:
            if self._next is None:
                self._next = int(self._fetch())
            nonce = self._next
            self._next += 1
            return nonce

    def reserve(self, count: int) -> range:
        """Reserve ``count`` consecutive nonces at once (batch sends)."""
        with self.lock:
            if self._next is None:
                self._next = int(self._fetch())
            start = self._next
            self._next += count
            return range(start, start + count)

    def resync(self) -> None:
        """Forget the local counter; the next call asks the node again."""
        with self.lock:
            self._next = None


class NonceBook:
    """One :class:`NonceManager` per address, created on demand."""

    def __init__(self, fetch: Callable[[str], int]):
        self._fetch = fetch
        self._managers: dict[str, NonceManager] = {}
        self._lock = threading.Lock()

    def __getitem__(self, address: str) -> NonceManager:
        with self._lock:
            manager = self._managers.get(address)
            if manager is None:
                manager = NonceManager(lambda: self._fetch(address))
                self._managers[address] = manager
            return manager

    def resync_all(self) -> None:
        with self._lock:
            managers = list(self._managers.values())
        for manager in managers:
            manager.resync()
