"""The IPFS daemon store: any Kubo-RPC-compatible daemon (js-ipfs, Kubo) through ``ipfshttpclient``.

``ipfshttpclient.connect()`` refuses daemon versions it does not know (js-ipfs 0.18, modern Kubo),
so the client is built with ``ipfshttpclient.Client(addr)``, which skips that check; reachability
is checked with ``id`` when the store is opened. Blobs are added with
``cid_version=1, raw_leaves=True, pin=True`` and the daemon's CID is compared with the locally
computed one, so both backends name the same bytes identically. Every ``get`` re-computes the CID
of the fetched bytes before returning them. ``cat`` of a CID the (offline) daemon does not have
hangs, so every call that may look a blob up carries a timeout, and a timeout becomes
:class:`BlobNotFoundError`.
"""

from __future__ import annotations

import io
import logging
import warnings

from chainfl.errors import BlobNotFoundError, BlobTooLargeError, IntegrityError, StoreError, StoreUnavailableError
from chainfl.storage.cid import compute_cid, normalize_cid

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0        # seconds for get/pin when the caller gives none
HAS_TIMEOUT = 2.0             # an unpinned block the daemon does not answer for within this is absent


def _ipfshttpclient():
    with warnings.catch_warnings():      # urllib3 deprecation noise on import
        warnings.simplefilter("ignore")
        import ipfshttpclient
    # ipfshttpclient 0.7 passes urllib3's removed `strict` argument on every request; the
    # resulting FutureWarning would land on stderr of every command. Silence exactly that one.
    warnings.filterwarnings("ignore", message="The 'strict' parameter is no longer needed",
                            category=FutureWarning)
    return ipfshttpclient


class IpfsStore:
    """A store backed by an IPFS daemon's RPC API at ``host:port`` (js-ipfs 5002, Kubo 5001)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5002, connect_timeout: float = 5.0):
        self.host = host
        self.port = int(port)
        self.url = f"ipfs://{host}:{self.port}"
        ipfs = _ipfshttpclient()
        self._errors = ipfs.exceptions
        proto = "ip6" if ":" in host else ("ip4" if host.replace(".", "").isdigit() else "dns")
        self._client = ipfs.Client(f"/{proto}/{host}/tcp/{self.port}/http")
        self.agent = self._check(connect_timeout)

    def __repr__(self) -> str:
        return f"IpfsStore({self.url!r}, agent={self.agent!r})"

    # --- Store protocol ---------------------------------------------------------------------
    def put(self, data: bytes) -> str:
        """Add and pin ``data``; return its CIDv1 (checked against the locally computed CID)."""
        data = bytes(data)
        expected = compute_cid(data)
        response = self._call("add", lambda: self._client.add(
            io.BytesIO(data), cid_version=1, raw_leaves=True, pin=True), cid=expected)
        if isinstance(response, list):            # some daemons stream one entry per object
            response = response[-1]
        got = normalize_cid(response["Hash"])
        if got != expected:
            raise IntegrityError(
                f"The IPFS daemon at {self.host}:{self.port} stored the blob as {got}, but "
                f"`add --cid-version 1 --raw-leaves` gives {expected}. Is it configured with a "
                f"non-default chunker or hash? Use a daemon with default settings.",
                cid=expected, expected=expected, actual=got)
        return got

    def get(self, cid: str, timeout: float | None = DEFAULT_TIMEOUT, max_bytes: int | None = None) -> bytes:
        """``cat`` the blob and verify it against ``cid`` before returning it.

        A daemon that does not have the blob never answers (offline); after ``timeout`` seconds
        without data this raises :class:`BlobNotFoundError`. With ``max_bytes``, at most
        ``max_bytes + 1`` bytes are read (``cat --length``): a longer blob raises
        :class:`BlobTooLargeError` without being read whole.
        """
        name = normalize_cid(cid)
        kwargs = {} if max_bytes is None else {"length": int(max_bytes) + 1}
        data = self._call("cat", lambda: self._client.cat(name, timeout=timeout or DEFAULT_TIMEOUT, **kwargs),
                          cid=name, timeout=timeout)
        if max_bytes is not None and len(data) > max_bytes:
            raise BlobTooLargeError(f"Blob {name} holds more than the {max_bytes} bytes allowed here; "
                                    f"refused after reading {len(data)} bytes.", cid=name, limit=int(max_bytes))
        actual = compute_cid(data)
        if actual != name:
            raise IntegrityError(
                f"The IPFS daemon at {self.host}:{self.port} returned {len(data)} bytes for {name} "
                f"that hash to {actual}. They were not used.", cid=name, expected=name, actual=actual)
        return data

    def has(self, cid: str) -> bool:
        """True if ``cid`` is pinned, or its root block answers within a short timeout."""
        name = normalize_cid(cid)
        try:
            self._client.pin.ls(name, type="recursive", timeout=HAS_TIMEOUT)
            return True
        except self._errors.ErrorResponse:
            pass                                   # "not pinned": maybe present anyway
        except self._errors.TimeoutError:
            return False
        except self._errors.ConnectionError as e:
            raise self._unavailable(e) from e
        try:
            self._client.block.stat(name, timeout=HAS_TIMEOUT)
            return True
        except (self._errors.TimeoutError, self._errors.ErrorResponse):
            return False
        except self._errors.ConnectionError as e:
            raise self._unavailable(e) from e

    def pin(self, cid: str, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Pin ``cid`` recursively (BlobNotFoundError if the daemon cannot find it in time)."""
        name = normalize_cid(cid)
        self._call("pin", lambda: self._client.pin.add(name, timeout=timeout or DEFAULT_TIMEOUT),
                   cid=name, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    # --- internals --------------------------------------------------------------------------
    def _check(self, timeout: float) -> str:
        try:
            info = self._client.id(timeout=timeout)
        except (self._errors.ConnectionError, self._errors.TimeoutError,
                self._errors.ProtocolError) as e:
            raise self._unavailable(e) from e
        except self._errors.Error as e:
            raise StoreUnavailableError(
                f"{self.host}:{self.port} answered, but not as an IPFS RPC API ({e}). "
                f"Check the port (js-ipfs: 5002, Kubo: 5001).") from e
        agent = info.get("AgentVersion", "unknown")
        log.debug("IPFS daemon at %s: %s", self.url, agent)
        return agent

    def _unavailable(self, e: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"No IPFS API at {self.host}:{self.port} — start a daemon (`chainfl ipfs up`: js-ipfs on "
            f"5002; or Kubo on 5001) or use the embedded store: --store file://DIR. ({type(e).__name__})")

    def _call(self, what: str, fn, *, cid: str, timeout: float | None = None):
        try:
            return fn()
        except self._errors.TimeoutError as e:
            raise BlobNotFoundError(
                f"The IPFS daemon at {self.host}:{self.port} did not find {cid} within "
                f"{timeout or DEFAULT_TIMEOUT:g} s ({what}). It is not stored there; put it first, "
                f"or connect the daemon to one that has it.", cid=cid) from e
        except self._errors.ConnectionError as e:
            raise self._unavailable(e) from e
        except self._errors.ErrorResponse as e:
            text = str(e)
            if "not found" in text.lower() or "no link" in text.lower():
                raise BlobNotFoundError(f"{cid}: {text}", cid=cid) from e
            if is_transient(text):              # a daemon starting or stopping: ridden out by the callers' retry
                raise StoreUnavailableError(f"The IPFS daemon at {self.host}:{self.port} is starting or stopping "
                                            f"(`{what}` for {cid}: {text}); retry in a moment") from e
            raise StoreError(f"The IPFS daemon at {self.host}:{self.port} refused `{what}` "
                             f"for {cid}: {text}") from e
        except self._errors.Error as e:
            raise StoreError(f"IPFS `{what}` for {cid} failed: {e}") from e


#: Error texts of a daemon that is starting or shutting down (js-ipfs answers while its block
#: store is closed: "Database is not open"); a request then succeeds once it is up again.
TRANSIENT_ERRORS = ("database is not open", "not started", "shutting down", "is closing", "repo is closed")


def is_transient(text: str) -> bool:
    """True if an IPFS error text says the daemon is starting or stopping (retry), not that the
    request is wrong."""
    low = str(text).lower()
    return any(t in low for t in TRANSIENT_ERRORS)
