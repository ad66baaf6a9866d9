"""Exception hierarchy.

Every error chainfl raises on purpose is a :class:`ChainflError`. Messages say what went wrong
*and* what to do next; the CLI prints them without a traceback and exits 1. Third-party errors are
wrapped at the backend boundary (``raise ... from e``). Subsystems subclass the bases here; the
registry's custom Solidity errors map to subclasses of :class:`ContractError`
(see ``chainfl/chain/errors.py``).
"""

from __future__ import annotations


class ChainflError(Exception):
    """Root of every error chainfl raises deliberately."""


class ConfigError(ChainflError):
    """A setting, URL, file or command-line value is invalid."""


class ToolNotFoundError(ChainflError):
    """A node-based tool (solcjs, ganache, anvil, jsipfs) is not installed."""


# --- chain -----------------------------------------------------------------------------------
class ChainError(ChainflError):
    """A problem talking to an Ethereum chain."""


class ChainConnectionError(ChainError):
    """No node answers at the configured URL."""


class ChainLockedError(ChainError):
    """The embedded chain's data directory is in use by another process."""


class TransactionError(ChainError):
    """A transaction reverted or failed for a reason other than a known custom error."""


class ContractError(TransactionError):
    """A registry custom error, decoded identically on every backend.

    ``error_name`` is the Solidity name, ``error_args`` the decoded arguments by name.
    """

    error_name: str = ""

    def __init__(self, message: str, *, error_name: str = "", error_args: dict | None = None):
        super().__init__(message)
        self.error_name = error_name or self.error_name
        self.error_args = dict(error_args or {})


class DeploymentError(ChainError):
    """No registry is deployed where one was expected, or the code there is not chainfl's."""


class TransactionReverted(TransactionError):
    """A transaction reverted (at gas estimation or on chain), on any backend.

    ``revert_data`` is the raw revert payload — 4-byte selector + ABI-encoded arguments, ``b""``
    when the EVM gave none — identical on eth-tester, Ganache and Anvil; ``receipt`` is set when the
    transaction was mined (status 0).
    """

    def __init__(self, message: str, *, revert_data: bytes = b"", receipt=None):
        super().__init__(message)
        self.revert_data = bytes(revert_data)
        self.receipt = receipt


# --- storage ---------------------------------------------------------------------------------
class StoreError(ChainflError):
    """A problem with the content-addressed store."""


class StoreUnavailableError(StoreError):
    """The store backend (e.g. an IPFS daemon) cannot be reached."""


class BlobNotFoundError(StoreError):
    """No blob with this CID is in the store (or reachable before the timeout)."""

    def __init__(self, message: str, *, cid: str):
        super().__init__(message)
        self.cid = cid


class BlobTooLargeError(StoreError):
    """A blob is larger than the caller allows (a task caps model blobs at what its model needs).
    Refused before it is read into memory."""

    def __init__(self, message: str, *, cid: str, limit: int, size: int | None = None):
        super().__init__(message)
        self.cid = cid
        self.limit = limit
        self.size = size


class IntegrityError(StoreError):
    """Bytes do not match the CID or the digest they were fetched under. Never loaded."""

    def __init__(self, message: str, *, cid: str | None = None, expected: str | None = None,
                 actual: str | None = None):
        super().__init__(message)
        self.cid = cid
        self.expected = expected
        self.actual = actual


class InvalidCidError(StoreError):
    """A string is not a CID chainfl can address (CIDv1, raw or dag-pb, sha2-256)."""

    def __init__(self, message: str, *, cid: str):
        super().__init__(message)
        self.cid = cid


class CodecError(ChainflError):
    """A model blob is malformed or does not fit the expected model (names, shapes, dtypes)."""


# --- data, learning, audit -------------------------------------------------------------------
class DataError(ChainflError):
    """A dataset cannot be loaded or used; names the file, column and row when known."""

    def __init__(self, message: str, *, path: str | None = None, column: str | None = None,
                 row: int | None = None):
        super().__init__(message)
        self.path = path
        self.column = column
        self.row = row


class LearningError(ChainflError):
    """Invalid training/aggregation input (e.g. no updates, mismatched shapes)."""


class AgentError(ChainflError):
    """A node agent or coordinator cannot proceed."""


class AuditError(ChainflError):
    """The training history failed verification; names the round, node and CID."""
