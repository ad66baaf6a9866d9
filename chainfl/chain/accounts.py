"""Accounts: development keys derived from the node mnemonic, and encrypted keystores.

Development accounts follow the path every local node uses, ``m/44'/60'/0'/0/i``, so the same
mnemonic (``ganache.env``'s ``MNEMONIC``) yields the same addresses on the embedded chain, Ganache
and Anvil. For real networks use :func:`load_keystore` (an encrypted JSON keystore, as written by
geth, ``cast wallet`` or ``eth_account.Account.encrypt``). Private keys are never printed or logged
here (eth_account's ``LocalAccount`` repr shows neither key nor address; print ``.address``).
"""

from __future__ import annotations

import json
import threading
from functools import lru_cache
from pathlib import Path

from eth_account import Account
from eth_account.hdaccount import HDPath, seed_from_mnemonic
from eth_account.signers.local import LocalAccount

from chainfl.errors import ConfigError

#: BIP-44 path prefix of Ethereum accounts used by Ganache, Anvil, Hardhat and MetaMask.
HD_PATH_PREFIX = "m/44'/60'/0'/0"

_lock = threading.Lock()
_derived: dict[tuple[str, int], LocalAccount] = {}


@lru_cache(maxsize=8)
def _seed(mnemonic: str) -> bytes:
    words = mnemonic.split()
    if len(words) not in (12, 15, 18, 21, 24):
        raise ConfigError(f"MNEMONIC must have 12-24 words, got {len(words)}; fix MNEMONIC in ganache.env")
    try:
        return seed_from_mnemonic(" ".join(words), "")
    except Exception as e:  # eth_account raises ValidationError for bad checksums / words
        raise ConfigError(f"MNEMONIC is not a valid BIP-39 phrase ({e}); fix MNEMONIC in ganache.env") from e


def derive_account(mnemonic: str, index: int) -> LocalAccount:
    """The account at ``m/44'/60'/0'/0/<index>`` of ``mnemonic`` (cached)."""
    if index < 0:
        raise ConfigError(f"account index must be >= 0, got {index}")
    key = (mnemonic, index)
    with _lock:
        account = _derived.get(key)
        if account is None:
            private_key = HDPath(f"{HD_PATH_PREFIX}/{index}").derive(_seed(mnemonic))
            account = Account.from_key(private_key)
            _derived[key] = account
    return account


def dev_accounts(mnemonic: str, count: int, start: int = 0) -> list[LocalAccount]:
    """Accounts ``start .. start+count-1`` of ``mnemonic``."""
    return [derive_account(mnemonic, i) for i in range(start, start + count)]


def load_keystore(path: str | Path, password: str) -> LocalAccount:
    """Decrypt an encrypted JSON keystore file into a signing account (for real networks)."""
    path = Path(path)
    try:
        keyfile = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"keystore {path} does not exist; pass the path of an encrypted JSON keystore") from e
    except (OSError, ValueError) as e:
        raise ConfigError(f"keystore {path} is not a readable JSON keystore ({e})") from e
    try:
        private_key = Account.decrypt(keyfile, password)
    except ValueError as e:
        raise ConfigError(f"cannot decrypt keystore {path}: wrong password or corrupt file") from e
    return Account.from_key(private_key)


# -- fast signing of plain EIP-1559 transactions --------------------------------------------------
# eth_account.sign_transaction spends ~2-5 ms per transaction validating and converting the dict;
# batches of 10,000 transactions (the activity simulator) need less. For the common shape — type 2,
# no access list — we build the RLP ourselves and sign the hash with coincurve (libsecp256k1;
# eth_keys when coincurve is missing): ~0.5 ms instead of 2-5 ms. Signatures are deterministic
# (RFC 6979), so the bytes equal eth_account's; the tests check that.
_FAST_KEYS = {"to", "value", "data", "gas", "nonce", "chainId", "maxFeePerGas", "maxPriorityFeePerGas", "type"}
_key_cache: dict[bytes, object] = {}  # private key -> signing function


def _signer(account: LocalAccount):
    """A function hash -> (v, r, s) for ``account``'s key (cached per key)."""
    raw = bytes(account.key)
    sign = _key_cache.get(raw)
    if sign is None:
        try:
            import coincurve

            key = coincurve.PrivateKey(raw)

            def sign(msg_hash: bytes):
                sig = key.sign_recoverable(msg_hash, hasher=None)  # r (32) | s (32) | recovery id
                return sig[64], int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")
        except ImportError:
            from eth_keys import keys

            key = keys.PrivateKey(raw)

            def sign(msg_hash: bytes):
                sig = key.sign_msg_hash(msg_hash)
                return sig.v, sig.r, sig.s
        _key_cache[raw] = sign
    return sign


def _as_bytes(value) -> bytes:
    if not value:
        return b""
    if isinstance(value, str):
        return bytes.fromhex(value[2:] if value.startswith("0x") else value)
    return bytes(value)


def sign_transaction(account: LocalAccount, tx: dict) -> bytes:
    """The signed raw transaction for ``tx`` (fast path for plain type-2 transactions)."""
    import rlp
    from eth_utils import keccak

    if "gasPrice" in tx or not set(tx) <= _FAST_KEYS or tx.get("type", 2) not in (2, "0x2"):
        return bytes(account.sign_transaction(tx).raw_transaction)
    fields = [int(tx["chainId"]), int(tx["nonce"]), int(tx["maxPriorityFeePerGas"]),
              int(tx["maxFeePerGas"]), int(tx["gas"]), _as_bytes(tx.get("to")),
              int(tx.get("value", 0)), _as_bytes(tx.get("data")), []]
    v, r, s = _signer(account)(keccak(b"\x02" + rlp.encode(fields)))
    return b"\x02" + rlp.encode(fields + [v, r, s])
