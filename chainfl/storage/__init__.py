"""Content-addressed storage for model blobs (see ARCHITECTURE.md, "storage/").

Two real backends behind one :class:`Store` protocol, chosen by URL with :func:`open_store`:

    file:///abs/dir         embedded block store in a local directory (the default:
                            ``config.default_store()`` = ``$CHAINFL_HOME/store``)
    ipfs://host:port        an IPFS daemon's Kubo RPC API. chainfl's own js-ipfs daemon
                            (``chainfl.storage.daemon``) listens on 5002, Kubo on 5001;
                            the port defaults to 5002 when omitted.
    http://host:port        the same as ipfs://host:port (the address form Kubo prints)

Both name a blob by the CIDv1 ``ipfs add --cid-version 1 --raw-leaves`` gives it
(:func:`compute_cid`), so a blob put through one is found under the same CID through the other,
and every ``get`` verifies the bytes against the CID before returning them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from chainfl import config
from chainfl.errors import ConfigError, IntegrityError
from chainfl.storage.cid import compute_cid, normalize_cid, parse_cid

__all__ = ["Store", "open_store", "compute_cid", "copy_blob", "parse_cid", "normalize_cid",
           "SCHEMES"]

SCHEMES = ("file", "ipfs", "http")
DEFAULT_IPFS_PORT = 5002


@runtime_checkable
class Store(Protocol):
    """A content-addressed blob store."""

    url: str

    def put(self, data: bytes) -> str:
        """Store ``data``; return its CIDv1 (equal to :func:`compute_cid` of the bytes)."""

    def get(self, cid: str, timeout: float | None = 30.0, max_bytes: int | None = None) -> bytes:
        """Return the bytes of ``cid``, verified (IntegrityError, BlobNotFoundError otherwise);
        a blob of more than ``max_bytes`` raises BlobTooLargeError before it is read whole."""

    def has(self, cid: str) -> bool:
        """True if the store holds ``cid``."""

    def pin(self, cid: str, timeout: float | None = 30.0) -> None:
        """Keep ``cid`` (BlobNotFoundError if the store does not hold it)."""


def open_store(url: str | None = None) -> Store:
    """Open the store at ``url`` (``None`` → ``config.default_store()``).

    Raises :class:`ConfigError` for an unknown scheme or malformed URL and
    :class:`StoreUnavailableError` if no IPFS API answers at an ``ipfs://``/``http://`` address.
    """
    url = url or config.default_store()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"Store URL {url!r}: a file URL needs an absolute path, "
                              f"e.g. file:///home/me/.chainfl/store (three slashes).")
        path = unquote(parts.path)
        if not path or not Path(path).is_absolute():
            raise ConfigError(f"Store URL {url!r}: give an absolute directory, e.g. file:///tmp/store.")
        from chainfl.storage.embedded import EmbeddedStore
        return EmbeddedStore(path)
    if scheme in ("ipfs", "http"):
        if parts.path not in ("", "/") or not parts.hostname:
            raise ConfigError(f"Store URL {url!r}: expected ipfs://host:port, e.g. "
                              f"ipfs://127.0.0.1:5002 (js-ipfs) or ipfs://127.0.0.1:5001 (Kubo).")
        try:
            port = parts.port or DEFAULT_IPFS_PORT
        except ValueError as e:
            raise ConfigError(f"Store URL {url!r}: invalid port ({e}).") from e
        from chainfl.storage.ipfs import IpfsStore
        return IpfsStore(parts.hostname, port)
    raise ConfigError(f"Unknown store URL {url!r}: use file:///abs/dir (embedded), "
                      f"ipfs://host:port or http://host:port (IPFS daemon RPC API).")


def copy_blob(source: Store, target: Store, cid: str, timeout: float | None = 30.0) -> str:
    """Fetch ``cid`` from ``source`` (verified) and put it into ``target`` under the same CID."""
    data = source.get(cid, timeout=timeout)
    stored = target.put(data)
    expected = normalize_cid(cid)
    if stored != expected:
        raise IntegrityError(f"{target.url} stored {expected} as {stored}.", cid=expected,
                             expected=expected, actual=stored)
    return stored
