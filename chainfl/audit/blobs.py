"""Blobs for the audit: fetched by CID, checked against the on-chain digest, decoded once.

A blob problem is a :class:`BlobProblem` with a stable ``kind``:

* ``blob-missing`` / ``blob-unreadable`` — this store cannot return it (absent, daemon error):
  the auditor cannot judge the blob, which is not the same as the blob being bad;
* ``blob-modified`` — the store's bytes do not match the CID;
* ``digest-mismatch`` — the bytes are not the ones the chain's digest names;
* ``blob-too-large`` — larger than the task's blob cap (refused unread);
* ``model-invalid`` / ``model-shape`` — not a safetensors model of the task's shape.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from chainfl.errors import (BlobNotFoundError, BlobTooLargeError, ChainflError, CodecError, IntegrityError,
                            StoreError)
from chainfl.storage.codec import check_state, decode_model, digest as sha256

__all__ = ["BlobCache", "BlobProblem", "UNSEEN", "hx"]

#: Problem kinds that say "this store could not show me the blob", not "the blob is bad".
UNSEEN = ("blob-missing", "blob-unreadable")


def hx(value: bytes | None) -> str | None:
    return None if value is None else "0x" + bytes(value).hex()


class BlobProblem(ChainflError):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def unseen(self) -> bool:
        return self.kind in UNSEEN


#: Bytes of verified blobs (and, separately, of decoded models) an audit keeps in memory; older
#: entries are dropped (and fetched again if needed), so memory stays bounded by the history's size.
CACHE_BYTES = 256 * 2**20


class _Bounded(OrderedDict):
    """An LRU mapping holding at most ``budget`` bytes of values (``size(value)``); the newest
    entry is always kept."""

    def __init__(self, budget: int, size):
        super().__init__()
        self.budget, self.size, self.held = int(budget), size, 0

    def get_fresh(self, key):
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        if key in self:
            self.held -= self.size(super().pop(key))
        super().__setitem__(key, value)
        self.held += self.size(value)
        while self.held > self.budget and len(self) > 1:
            _, old = self.popitem(last=False)
            self.held -= self.size(old)


def _state_bytes(entry) -> int:
    return sum(int(np.asarray(v).nbytes) for v in entry[0].values())


class BlobCache:
    """Fetches blobs by CID, checks them against the on-chain digest, decodes models once (while
    they fit in :data:`CACHE_BYTES`; failures are always remembered)."""

    def __init__(self, store, timeout: float, max_bytes: int | None = None, budget: int = CACHE_BYTES):
        self.store = store
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.raw = _Bounded(budget, len)
        self.failures: dict[tuple[bytes, str], tuple[str, str]] = {}
        self.models = _Bounded(budget, _state_bytes)
        self.fetched = 0
        self.bytes = 0

    def blob(self, digest: bytes, cid: str, max_bytes: int | None = None) -> bytes:
        """Verified bytes; raises :class:`BlobProblem` on any failure (cached)."""
        key = (bytes(digest), cid)
        cached = self.raw.get_fresh(key)
        if cached is not None:
            return cached
        if key in self.failures:
            raise BlobProblem(*self.failures[key])
        limit = max_bytes if max_bytes is not None else self.max_bytes
        try:
            data = self.store.get(cid, timeout=self.timeout) if limit is None else \
                self.store.get(cid, timeout=self.timeout, max_bytes=limit)
        except BlobNotFoundError as e:
            return self._fail(key, "blob-missing", f"blob not in the store {self.store.url} ({e})")
        except BlobTooLargeError as e:
            return self._fail(key, "blob-too-large", f"larger than the task's {e.limit}-byte blob cap")
        except IntegrityError as e:
            return self._fail(key, "blob-modified", f"the store's bytes do not match the CID ({e})")
        except StoreError as e:
            return self._fail(key, "blob-unreadable", f"the store could not return it ({e})")
        self.fetched += 1
        self.bytes += len(data)
        got = sha256(data)
        if got != key[0]:
            return self._fail(key, "digest-mismatch",
                              f"sha256 of the blob is {hx(got)}, the chain records {hx(key[0])}")
        self.raw.put(key, data)
        return data

    def model(self, digest: bytes, cid: str, expected: dict | None) -> tuple[OrderedDict, dict]:
        key = (bytes(digest), cid)
        cached = self.models.get_fresh(key)
        if cached is not None:
            state, meta = cached
            if expected is not None:
                try:
                    check_state(state, expected)
                except CodecError as e:
                    raise BlobProblem("model-shape", str(e)) from e
            return state, meta
        data = self.blob(digest, cid)
        try:
            state, meta = decode_model(data, expected)
        except CodecError as e:
            self.failures[key] = ("model-invalid", f"not a usable model blob: {e}")
            raise BlobProblem(*self.failures[key]) from e
        entry = (OrderedDict(state), meta)
        self.models.put(key, entry)
        return entry

    def _fail(self, key, kind: str, message: str):
        self.failures[key] = (kind, message)
        raise BlobProblem(kind, message)
