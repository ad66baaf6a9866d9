"""One chain interface over every backend, chosen by URL (see :func:`chainfl.chain.factory.connect`).

:class:`Chain` holds what all backends share: dev accounts from ``ganache.env``'s mnemonic, local
signing with one :class:`~chainfl.chain.nonce.NonceManager` per account, receipts, revert
decoding and batch sends. Subclasses add how to reach the chain and the dev-chain controls
(automine, mining with a timestamp, moving time):

- :class:`chainfl.chain.embedded.EthTesterChain` — ``eth-tester://`` (persisted) and
  ``eth-tester://memory``;
- :class:`chainfl.chain.rpc.RpcChain` — ``http(s)://host:port`` (Ganache, Anvil, any node).

Error contract: a reverted transaction — at gas estimation or mined with status 0 — raises
:class:`chainfl.errors.TransactionReverted` (a :class:`TransactionError`) whose ``revert_data`` is
the raw revert payload (4-byte selector + ABI arguments, ``b""`` when there is none), identical on
every backend.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterable

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from web3 import Web3

from chainfl.chain.accounts import derive_account, dev_accounts, sign_transaction
from chainfl.chain.nonce import NonceBook
from chainfl.config import NodeSettings
from chainfl.errors import ChainConnectionError, ConfigError, TransactionError, TransactionReverted

log = logging.getLogger(__name__)

GWEI = 10**9
#: Fee cap and tip for every transaction: dev chains start near 1 gwei base fee and only fall.
DEFAULT_MAX_FEE = 100 * GWEI
DEFAULT_PRIORITY_FEE = 1 * GWEI
#: Ether sent from account 0 to an account beyond ACCOUNT_COUNT on its first use.
EXTRA_ACCOUNT_FUNDING_ETH = 1000

#: Sends of one transaction before a nonce clash (another process on the account) is an error.
NONCE_ATTEMPTS = 6
#: What nodes say when a nonce is already used: Anvil/Geth "nonce too low", "replacement
#: transaction underpriced" (same nonce pending), "already known"; Anvil "transaction already
#: imported" (another process signed the very same bytes: same nonce, same call); Ganache "the tx
#: doesn't have the correct nonce". Within one process a signed transaction is sent once (the loop
#: below re-signs with a fresh nonce), so any of these means another sender took the nonce.
_NONCE_CLASH = ("nonce", "replacement transaction underpriced", "already known", "known transaction",
                "already imported")

_ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
_PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)


def describe_revert(data: bytes) -> str:
    """A readable summary of a revert payload."""
    if not data:
        return "reverted without data"
    if data[:4] == _ERROR_SELECTOR:
        try:
            return f"reverted: {abi_decode(['string'], data[4:])[0]!r}"
        except Exception:
            pass
    if data[:4] == _PANIC_SELECTOR:
        try:
            return f"panicked with code {hex(abi_decode(['uint256'], data[4:])[0])}"
        except Exception:
            pass
    return f"reverted with custom error 0x{data[:4].hex()} ({len(data)} bytes of revert data)"


def _nonce_clash(e: Exception) -> bool:
    text = str(e).lower()
    return any(s in text for s in _NONCE_CLASH)


def as_bytes(value) -> bytes:
    """Transaction data given as bytes, HexBytes or a ``0x`` hex string."""
    if not value:
        return b""
    if isinstance(value, str):
        return bytes.fromhex(value[2:] if value.startswith("0x") else value)
    return bytes(value)


def _label(tx: dict) -> str:
    to = tx.get("to")
    return f"transaction to {to}" if to else "contract deployment"


class Chain:
    """A connection to one chain. Use :func:`chainfl.chain.connect` to make one; close it (or use ``with``)."""

    kind: str = ""

    def __init__(self, w3: Web3, url: str, settings: NodeSettings):
        self.w3 = w3
        self.url = url
        self.settings = settings
        self.chain_id = int(w3.eth.chain_id)
        self.accounts: list[LocalAccount] = dev_accounts(settings.mnemonic, settings.account_count)
        self._nonces = NonceBook(lambda address: self.w3.eth.get_transaction_count(address, "pending"))
        self._funded: set[str] = {a.address for a in self.accounts}
        self._fund_lock = threading.Lock()
        self._automine = True
        self.max_fee = DEFAULT_MAX_FEE
        self.priority_fee = DEFAULT_PRIORITY_FEE
        self.receipt_timeout = 120.0

    # -- accounts --------------------------------------------------------------------------
    def account(self, i: int) -> LocalAccount:
        """Dev account ``i``; accounts beyond ACCOUNT_COUNT get ether from account 0 on first use."""
        if i < len(self.accounts):
            return self.accounts[i]
        account = derive_account(self.settings.mnemonic, i)
        with self._fund_lock:
            if account.address not in self._funded:
                if self.w3.eth.get_balance(account.address) == 0:
                    self.send_ether(self.accounts[0], account.address,
                                    EXTRA_ACCOUNT_FUNDING_ETH * 10**18)
                self._funded.add(account.address)
        return account

    # -- sending ---------------------------------------------------------------------------
    def _fees(self, tx: dict) -> dict:
        if "gasPrice" not in tx:
            tx.setdefault("maxFeePerGas", self.max_fee)
            tx.setdefault("maxPriorityFeePerGas", self.priority_fee)
        return tx

    def transact(self, contract_fn, sender: LocalAccount, gas: int | None = None, value: int = 0,
                 wait: bool = True):
        """Build ``contract_fn`` (a bound ContractFunction or ContractConstructor), sign it with
        ``sender``'s key, send it and (by default) wait for the receipt.

        Gas is estimated unless ``gas`` is given (one round trip less on HTTP nodes). Raises
        :class:`TransactionReverted` (with ``revert_data``) if estimation or execution reverts.
        Returns the receipt, or the transaction hash when ``wait=False``.
        """
        # Placeholders keep web3 from asking the node; the nonce is set at send time and the gas
        # estimated below (so an estimation revert is decoded like an on-chain one).
        params: dict[str, Any] = self._fees({"from": sender.address, "value": value,
                                             "chainId": self.chain_id, "nonce": 0,
                                             "gas": int(gas) if gas is not None else 1})
        try:
            tx = dict(contract_fn.build_transaction(params))
        except Exception as e:
            raise TransactionError(f"cannot build {_fn_label(contract_fn)}: {e}") from e
        if gas is None:
            tx["gas"] = self._estimate(tx, sender, label=_fn_label(contract_fn))
        return self.send_transaction(tx, sender, wait=wait)

    def send_ether(self, sender: LocalAccount, to: str, wei: int, wait: bool = True):
        """Send ``wei`` from ``sender`` to ``to``; returns the receipt."""
        tx = {"to": Web3.to_checksum_address(to), "value": int(wei), "gas": 21_000, "data": b""}
        return self.send_transaction(tx, sender, wait=wait)

    def send_transaction(self, tx: dict, sender: LocalAccount, wait: bool = True):
        """Sign and send a transaction dict (``to``, ``value``, ``data``, ``gas`` …; ``nonce``,
        fees and chain id are filled in); wait for its receipt and check its status."""
        tx = self._fees(dict(tx))
        tx["chainId"] = self.chain_id
        tx.pop("from", None)
        if "gas" not in tx:
            tx["gas"] = self._estimate(tx, sender)
        tx_hash = self._sign_and_send(tx, sender)
        if not wait:
            return tx_hash
        receipt = self.wait_for_receipt(tx_hash)
        self._check(receipt, tx, sender)
        return receipt

    def _estimate(self, tx: dict, sender: LocalAccount, label: str | None = None) -> int:
        probe = {k: v for k, v in tx.items() if k in ("to", "value", "data")}
        probe["from"] = sender.address
        try:
            return int(self.w3.eth.estimate_gas(probe))
        except Exception as e:
            if not _looks_like_revert(e):
                raise TransactionError(f"cannot estimate gas for {label or _label(tx)}: {e}") from e
            data = self._revert_data(probe, "latest")
            raise TransactionReverted(f"{label or _label(tx)} from {sender.address} would revert "
                                      f"(gas estimation failed): {describe_revert(data)}",
                                      revert_data=data) from e

    def _sign_and_send(self, tx: dict, sender: LocalAccount) -> bytes:
        manager = self._nonces[sender.address]
        with manager.lock:  # sends of one account leave in nonce order
            for attempt in range(NONCE_ATTEMPTS):
                tx["nonce"] = manager.next()
                raw = sign_transaction(sender, tx)
                try:
                    return bytes(self._send_raw(raw))
                except ChainConnectionError:
                    manager.resync()
                    raise
                except Exception as e:
                    manager.resync()
                    # another process on the same account took this nonce (its transaction is
                    # pending or mined): ask the node for the next free one and send again
                    if _nonce_clash(e) and attempt < NONCE_ATTEMPTS - 1:
                        log.info("nonce %s of %s taken (%s); re-syncing", tx["nonce"], sender.address, e)
                        time.sleep(0.05 * (attempt + 1))
                        continue
                    raise TransactionError(
                        f"the node rejected the {_label(tx)} from {sender.address}: {e}") from e
        raise AssertionError("unreachable")

    def _send_raw(self, raw: bytes) -> bytes:
        return self.w3.eth.send_raw_transaction(raw)

    def wait_for_receipt(self, tx_hash, timeout: float | None = None):
        """The receipt of ``tx_hash`` once mined; :class:`TransactionError` after ``timeout`` s."""
        from web3.exceptions import TimeExhausted

        limit = timeout or self.receipt_timeout
        try:
            return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=limit, poll_latency=0.05)
        except TimeExhausted as e:
            raise TransactionError(f"transaction {bytes(tx_hash).hex()} not mined after {limit:.0f} s "
                                   f"(automine off? call mine_block())") from e

    def _check(self, receipt, tx: dict, sender: LocalAccount):
        if receipt["status"] == 1:
            return receipt
        probe = {k: v for k, v in tx.items() if k in ("to", "value", "data", "gas")}
        probe["from"] = sender.address
        data = self._mined_revert_data(receipt, probe)
        raise TransactionReverted(
            f"{_label(tx)} from {sender.address} reverted in block {receipt['blockNumber']} "
            f"(tx {receipt['transactionHash'].hex()}): {describe_revert(data)}",
            revert_data=data, receipt=receipt)

    def _revert_data(self, call: dict, block) -> bytes:
        """Re-run ``call`` at ``block`` and return the raw revert payload (backend-specific)."""
        raise NotImplementedError

    def _mined_revert_data(self, receipt, call: dict) -> bytes:
        """The revert payload of a mined, failed transaction. Default: re-run it on the parent
        block's state, which is exact when it was alone in its block (automine); backends
        override this with an exact method where they have one."""
        return self._revert_data(call, max(int(receipt["blockNumber"]) - 1, 0))

    # -- batches ---------------------------------------------------------------------------
    def send_many(self, txs: Iterable[dict], sender: LocalAccount | None = None, *,
                  wait: bool = True, check: bool = True, chunk: int = 500) -> list:
        """Sign and send many transactions without waiting for each receipt, then wait for all.

        Each item is a transaction dict (``to``, ``value``, ``data``, ``gas``, optional fee fields;
        ``gas`` defaults to 21,000 for plain transfers, otherwise it is estimated) and may carry its
        own signer under ``"sender"`` (a LocalAccount); ``sender`` is the default signer. Nonces are
        reserved per account up front, in list order, so items of one sender execute in list order.
        Transactions go to the node in JSON-RPC batches of ``chunk`` (one request per chunk).

        Blocks: with automine on, the batch is mined explicitly in blocks of up to ``chunk``
        transactions (and 90 % of the block gas limit), automine is restored afterwards. With
        automine off nothing is mined: the caller decides the blocks (:meth:`mine_block`).

        Returns the receipts in input order (``wait=True``) or the transaction hashes
        (``wait=False``; collect later with :meth:`wait_for_receipts`). With ``check=True`` a
        reverted transaction raises :class:`TransactionReverted` naming its index. With automine
        off, ``wait=True`` would wait for blocks nobody mines: pass ``wait=False``, call
        :meth:`mine_block`, then :meth:`wait_for_receipts`.
        """
        items = []
        for i, raw in enumerate(txs):
            tx = dict(raw)
            signer = tx.pop("sender", None) or sender
            if signer is None:
                raise ConfigError(f"send_many: transaction {i} has no sender; pass sender= or a 'sender' key")
            tx.pop("from", None)
            tx = self._fees(tx)
            tx["chainId"] = self.chain_id
            tx.setdefault("value", 0)
            if "gas" not in tx:
                tx["gas"] = 21_000 if not tx.get("data") else self._estimate(tx, signer)
            items.append((tx, signer))
        if self._automine and len(items) > 1:
            hashes = self._send_in_blocks(items, chunk)
        else:
            hashes = self._send_batch(items, chunk)
        if not wait:
            return hashes
        receipts = self.wait_for_receipts(hashes)
        if check:
            for i, (receipt, (tx, signer)) in enumerate(zip(receipts, items)):
                if receipt["status"] != 1:
                    try:
                        self._check(receipt, tx, signer)
                    except TransactionReverted as e:
                        raise TransactionReverted(f"send_many item {i}: {e}", revert_data=e.revert_data,
                                                  receipt=receipt) from None
        return receipts

    def _send_in_blocks(self, items, chunk: int) -> list[bytes]:
        """With automine on, mine the batch explicitly: blocks of at most ``chunk`` transactions and
        90 % of the block gas limit. (Anvil's automine leaves part of a large burst in its pool and
        can stall; eth-tester mining one block per transaction is slow.)"""
        gas_cap = int(self.w3.eth.get_block("latest")["gasLimit"]) * 9 // 10
        groups, group, gas = [], [], 0
        for item in items:
            if group and (len(group) >= chunk or gas + int(item[0]["gas"]) > gas_cap):
                groups.append(group)
                group, gas = [], 0
            group.append(item)
            gas += int(item[0]["gas"])
        groups.append(group)
        hashes: list[bytes] = []
        self.automine(False)
        try:
            for group in groups:
                hashes += self._send_batch(group, chunk)
                self.mine_block()
        finally:
            self.automine(True)
        return hashes

    def _sign_batch(self, items: list[tuple[dict, LocalAccount]]) -> list[bytes]:
        by_sender: dict[str, list[int]] = {}
        for idx, (_, signer) in enumerate(items):
            by_sender.setdefault(signer.address, []).append(idx)
        for address, idxs in by_sender.items():
            for nonce, idx in zip(self._nonces[address].reserve(len(idxs)), idxs):
                items[idx][0]["nonce"] = nonce
        return [sign_transaction(signer, tx) for tx, signer in items]

    def _send_batch(self, items, chunk: int) -> list[bytes]:
        raws = self._sign_batch(items)
        hashes = []
        for raw, (tx, signer) in zip(raws, items):
            try:
                hashes.append(bytes(self._send_raw(raw)))
            except Exception as e:
                self._nonces[signer.address].resync()
                raise TransactionError(f"the node rejected a batched {_label(tx)} from "
                                       f"{signer.address} after {len(hashes)} were sent: {e}") from e
        return hashes

    def wait_for_receipts(self, hashes: list, timeout: float | None = None) -> list:
        """Receipts of ``hashes`` in order (waits until all are mined)."""
        return [self.wait_for_receipt(h, timeout) for h in hashes]

    # -- dev-chain controls ------------------------------------------------------------------
    @property
    def automine_enabled(self) -> bool:
        return self._automine

    def automine(self, enabled: bool) -> None:
        """Mine one block per transaction (on) or only on :meth:`mine_block` (off)."""
        raise NotImplementedError

    def mine_block(self, timestamp: int | None = None) -> int:
        """Mine one block (with pending transactions), optionally at ``timestamp``; returns its number."""
        raise NotImplementedError

    def advance_time(self, seconds: int) -> int:
        """Move block time forward by ``seconds`` and mine a block; returns its timestamp."""
        raise NotImplementedError

    def latest_timestamp(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def block_number(self) -> int:
        return int(self.w3.eth.block_number)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} chain_id={self.chain_id}>"


def _looks_like_revert(e: Exception) -> bool:
    from web3.exceptions import ContractLogicError

    if isinstance(e, ContractLogicError):
        return True
    try:
        from eth_tester.exceptions import TransactionFailed
        if isinstance(e, TransactionFailed):
            return True
    except ImportError:  # pragma: no cover - eth-tester is a dependency
        pass
    text = str(e).lower()
    return "revert" in text or "execution reverted" in text


def _fn_label(contract_fn) -> str:
    name = getattr(contract_fn, "fn_name", None)
    if name:
        return f"{name}() on {contract_fn.address}"
    return "contract deployment"
