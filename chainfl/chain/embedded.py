"""The embedded chain: py-evm through eth-tester, in memory or persisted on disk.

On disk (``eth-tester://``) the whole py-evm database (state trie, blocks, receipts, canonical
head) lives in one SQLite file, ``<home>/chain/chain.sqlite``: a table of ``(key BLOB, value
BLOB)`` behind py-evm's ``AtomicDB`` — no pickle. Writes accumulate in one open SQLite transaction
that is committed after every mined block, so the file always holds the state as of the last mined
block: a crash loses at most the block being built, never leaves half a block. ``close()`` discards
what was not mined (with automine off: the queued transactions). On reopen the canonical head is
read back from the database and mining continues on top of it.

With automine off, sent transactions wait in a queue (like a node's pool) and ``mine_block`` mines
them together in one block, optionally at a given timestamp.

A second process that opens the same directory gets :class:`ChainLockedError` (an ``fcntl`` lock on
``<home>/chain/LOCK``, which also holds the owner's pid). eth-tester is not thread-safe: every
request goes through one lock, so threads in one process can share a chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from chainfl.chain.backends import Chain, as_bytes
from chainfl.config import NodeSettings
from chainfl.errors import ChainError, ChainLockedError, ConfigError

log = logging.getLogger(__name__)

#: Chain id of eth-tester's chain class (kept so signed transactions match what eth-tester expects).
EMBEDDED_CHAIN_ID = 131277322940537
DB_FILE = "chain.sqlite"
LOCK_FILE = "LOCK"


class SqliteKV:
    """A durable key-value store for py-evm: one SQLite table, committed explicitly."""

    def __init__(self, path: Path):
        self.path = path
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level="DEFERRED")
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL)")
        self._conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._conn.commit()

    def get(self, key: bytes) -> bytes | None:
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set(self, key: bytes, value: bytes) -> None:
        self._conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    def delete(self, key: bytes) -> bool:
        return self._conn.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount > 0

    def get_meta(self, name: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, name: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def commit(self) -> None:
        self._conn.commit()

    def rollback(self) -> None:
        self._conn.rollback()

    def close(self) -> None:
        self._conn.close()


def _make_base_db(kv: SqliteKV | None):
    from eth.db.atomic import AtomicDB
    from eth.db.backends.base import BaseDB
    from eth.db.backends.memory import MemoryDB

    if kv is None:
        return AtomicDB(MemoryDB())

    class _KVDB(BaseDB):
        def __getitem__(self, key: bytes) -> bytes:
            value = kv.get(key)
            if value is None:
                raise KeyError(key)
            return value

        def __setitem__(self, key: bytes, value: bytes) -> None:
            kv.set(key, value)

        def __delitem__(self, key: bytes) -> None:
            if not kv.delete(key):
                raise KeyError(key)

        def _exists(self, key: bytes) -> bool:
            return kv.get(key) is not None

    return AtomicDB(_KVDB())


def _chain_class(gas_limit: int):
    from eth.chains.base import MiningChain
    from eth.consensus import ConsensusApplier, NoProofConsensus
    from eth.vm.forks import ShanghaiVM

    vm_config = ConsensusApplier(NoProofConsensus).amend_vm_configuration(((0, ShanghaiVM),))

    class EmbeddedChain(MiningChain):
        # Shanghai, the newest hardfork Ganache supports: the same EVM rules on every backend.
        chain_id = EMBEDDED_CHAIN_ID
        vm_configuration = vm_config

        def create_header_from_parent(self, parent_header, **header_params):
            header_params["gas_limit"] = parent_header.gas_limit  # constant block gas limit
            return super().create_header_from_parent(parent_header, **header_params)

        def get_transaction_builder(self):
            return super().get_vm().get_transaction_builder()

    return EmbeddedChain


def _backend_class():
    from eth.vm.spoof import SpoofTransaction
    from eth_tester.backends.pyevm.main import (
        PyEVMBackend,
        _get_vm_for_block_number,
        serialize_transaction,
        serialize_transaction_receipt,
    )
    from eth_tester.exceptions import TransactionNotFound
    from eth_utils import encode_hex

    class PersistentPyEVMBackend(PyEVMBackend):
        """eth-tester's py-evm backend around a chain we build (and reopen) ourselves.

        Also looks transactions up through py-evm's hash index instead of scanning every block
        from the head (eth-tester's default), which makes receipts and ``get_logs`` over old
        blocks O(1) per transaction.
        """

        def __init__(self, chain, account_keys, on_mined):  # noqa: D401 - no super().__init__
            self.chain = chain
            self.account_keys = tuple(account_keys)
            self._on_mined = on_mined
            self.time_offset = 0
            self.queue: list = []  # transactions sent while automine is off, not yet mined
            self._blocks: dict[int, tuple] = {}  # block number -> (block, receipts)

        def mine_blocks(self, num_blocks=1, coinbase=b"\x00" * 20):
            hashes = super().mine_blocks(num_blocks, coinbase)
            self._on_mined()
            return hashes

        def refresh_pending_timestamp(self) -> None:
            """Before the first transaction of a block, move its timestamp up to now (+ offset)."""
            header = self.chain.header
            if header.gas_used == 0:
                now = int(time.time()) + self.time_offset
                if now > header.timestamp:
                    self.chain.header = header.copy(timestamp=now)

        def send_raw_transaction(self, raw_transaction):
            self.refresh_pending_timestamp()
            return super().send_raw_transaction(raw_transaction)

        def queue_raw(self, raw_transaction: bytes) -> bytes:
            """Automine off: decode and queue a signed transaction for the next mined block."""
            tx = self.chain.get_vm().get_transaction_builder().decode(raw_transaction)
            self.queue.append(tx)
            return tx.hash

        def mine_queue(self, timestamp: int | None = None) -> None:
            """Mine one block holding the queued transactions (one trie build, not one per tx)."""
            from eth_utils.exceptions import ValidationError as EVMValidationError

            if timestamp is not None:
                self.chain.header = self.chain.header.copy(timestamp=int(timestamp))
            else:
                self.refresh_pending_timestamp()
            txs, self.queue = tuple(self.queue), []
            try:
                self.chain.mine_all(txs, mix_hash=os.urandom(32))
            except EVMValidationError:
                # Some transaction is invalid (nonce, balance): apply the valid ones, drop the rest.
                for tx in txs:
                    try:
                        self.chain.apply_transaction(tx)
                    except EVMValidationError as e:
                        log.warning("dropped invalid transaction %s: %s", encode_hex(tx.hash), e)
                super().mine_blocks(1)
            self._on_mined()

        def _locate(self, transaction_hash):
            head = self.chain.get_block()
            for index, tx in enumerate(head.transactions):
                if tx.hash == transaction_hash:
                    return head, tx, index
            try:
                block_number, index = self.chain.chaindb.get_transaction_index(transaction_hash)
            except Exception as e:
                raise TransactionNotFound(
                    f"No transaction found for transaction hash: {encode_hex(transaction_hash)}") from e
            block = self._mined_block(block_number)
            return block, block.transactions[index], index

        def _mined_block(self, number: int):
            """Mined blocks never change here (no reorgs): keep the last few decoded."""
            cached = self._blocks.get(number)
            if cached is None:
                block = self.chain.get_canonical_block_by_number(number)
                cached = (block, block.get_receipts(self.chain.chaindb))
                if len(self._blocks) >= 16:
                    self._blocks.pop(next(iter(self._blocks)))
                self._blocks[number] = cached
            return cached[0]

        def get_transaction_by_hash(self, transaction_hash):
            block, tx, index = self._locate(transaction_hash)
            is_pending = block.number == self.chain.get_block().number
            return serialize_transaction(block, tx, index, is_pending)

        def get_transaction_receipt(self, transaction_hash):
            block, tx, index = self._locate(transaction_hash)
            is_pending = block.number == self.chain.get_block().number
            if is_pending:  # like a node: no receipt before the block is mined
                raise TransactionNotFound(
                    f"Transaction {encode_hex(transaction_hash)} is pending (not mined yet)")
            return serialize_transaction_receipt(
                block, self._blocks[block.number][1], tx, index, is_pending, self.chain.get_vm())

        def mined_revert_data(self, transaction_hash: bytes) -> bytes:
            """Revert bytes of a mined transaction: re-execute its block up to and including it."""
            from eth.exceptions import Revert

            number, index = self.chain.chaindb.get_transaction_index(transaction_hash)
            block = self._mined_block(number)
            parent = self.chain.get_canonical_block_header_by_number(number - 1)
            vm = self.chain.get_vm(at_header=block.header.copy(state_root=parent.state_root))
            state = vm.state
            snapshot = state.snapshot()
            try:
                for tx in block.transactions[:index]:
                    state.apply_transaction(tx)
                computation = state.apply_transaction(block.transactions[index])
            finally:
                state.revert(snapshot)
            error = computation._error if computation.is_error else None
            if isinstance(error, Revert) and error.args and isinstance(error.args[0], bytes):
                return error.args[0]
            return b""

        def revert_data(self, transaction: dict, block_number="latest") -> bytes:
            """Run ``transaction`` (canonical eth-tester dict) without committing; return revert bytes."""
            from eth.exceptions import Revert

            tx = dict(transaction)
            tx.setdefault("gas", self._max_available_gas())
            unsigned = self._get_normalized_and_unsigned_evm_transaction(tx, block_number)
            spoofed = SpoofTransaction(unsigned, from_=transaction["from"])
            vm = _get_vm_for_block_number(self.chain, block_number)
            snapshot = vm.state.snapshot()
            try:
                computation = vm.state.apply_transaction(spoofed)
            finally:
                vm.state.revert(snapshot)
            error = computation._error if computation.is_error else None
            if isinstance(error, Revert) and error.args and isinstance(error.args[0], bytes):
                return error.args[0]
            return b""

    return PersistentPyEVMBackend


class EmbeddedEVM:
    """Owns the py-evm chain, its database, its lock and the eth-tester object."""

    def __init__(self, settings: NodeSettings, directory: Path | None):
        from eth_tester import EthereumTester
        from eth_tester.backends.pyevm.main import (
            generate_genesis_state_for_keys,
            get_account_keys_from_mnemonic,
            get_default_genesis_params,
        )

        self.directory = directory
        self.lock = threading.RLock()
        self.automine = True  # False: transactions wait in the pending block until mine_block()
        self._lock_fd: int | None = None
        self._kv: SqliteKV | None = None
        if directory is not None:
            from chainfl import config

            config.writable_dir(directory, "embedded chain directory")
            self._acquire_lock(directory / LOCK_FILE)
            try:
                self._kv = SqliteKV(directory / DB_FILE)
            except sqlite3.Error as e:
                self._release_lock()
                raise ChainError(f"cannot open the embedded chain database {directory / DB_FILE}: {e}; "
                                 f"delete {directory} to start a fresh chain") from e
        try:
            keys = get_account_keys_from_mnemonic(settings.mnemonic, quantity=settings.account_count,
                                                  hd_path="m/44'/60'/0'/0")
            fingerprint = hashlib.sha256(
                f"{settings.mnemonic}|{settings.account_count}|{settings.account_balance_eth}".encode()).hexdigest()
            chain_cls = _chain_class(settings.gas_limit)
            base_db = _make_base_db(self._kv)
            existing = self._kv.get_meta("genesis") if self._kv else None
            if existing is None:
                state = generate_genesis_state_for_keys(
                    keys, overrides={"balance": settings.account_balance_eth * 10**18})
                params = get_default_genesis_params(overrides={"gas_limit": settings.gas_limit})
                chain = chain_cls.from_genesis(base_db, params, state)
                if self._kv:
                    self._kv.set_meta("genesis", json.dumps({"fingerprint": fingerprint,
                                                             "created": int(time.time())}))
                    self._kv.commit()
            else:
                if json.loads(existing)["fingerprint"] != fingerprint:
                    raise ConfigError(
                        f"the embedded chain in {directory} was created with a different MNEMONIC, "
                        f"ACCOUNT_COUNT or ACCOUNT_BALANCE_ETH than ganache.env has now; restore those "
                        f"settings or delete {directory} to start a fresh chain")
                chain = chain_cls(base_db)
            self.backend = _backend_class()(chain, keys, self._commit)
            if self._kv:
                self.backend.time_offset = int(self._kv.get_meta("time_offset") or 0)
            self.tester = EthereumTester(self.backend)
        except BaseException:
            self.close()
            raise

    # -- lock ------------------------------------------------------------------------------
    def _acquire_lock(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.pread(fd, 32, 0).decode().strip() or "?"
            finally:
                os.close(fd)
            raise ChainLockedError(
                f"the embedded chain in {path.parent} is in use by pid {pid} — use one process, "
                f"or a node: `chainfl chain up` and --rpc http://...") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- durability ------------------------------------------------------------------------
    def _commit(self) -> None:
        if self._kv is not None:
            self._kv.set_meta("time_offset", str(self.backend.time_offset))
            self._kv.commit()

    def close(self) -> None:
        with self.lock:
            if self._kv is not None:
                # Uncommitted writes belong to an unmined pending block: drop them, the file keeps
                # the state as of the last mined block.
                try:
                    self._kv.rollback()
                finally:
                    self._kv.close()
                    self._kv = None
            self._release_lock()


def _locked_provider(evm: EmbeddedEVM):
    from web3 import EthereumTesterProvider

    class LockedEthereumTesterProvider(EthereumTesterProvider):
        """eth-tester is not thread-safe: one request at a time."""

        def make_request(self, method, params):
            with evm.lock:
                if method == "eth_sendRawTransaction" and not evm.automine:
                    return self._add_to_pending_block(params)
                return super().make_request(method, params)

        def _add_to_pending_block(self, params):
            # eth-tester's own "no automine" mode validates each transaction against the last
            # mined state, so a sender's second pending transaction fails its nonce check; and
            # py-evm's apply_transaction rebuilds the block's tries per transaction (quadratic).
            # So queue them like a node's pool and mine them together in mine_block().
            from eth_utils import to_bytes

            request_id = self._current_request_id
            self._current_request_id += 1
            try:
                tx_hash = evm.backend.queue_raw(to_bytes(hexstr=params[0]))
            except Exception as e:  # invalid nonce, balance, gas: report like a node would
                return {"id": request_id, "jsonrpc": "2.0", "error": {"code": -32000, "message": str(e)}}
            return {"id": request_id, "jsonrpc": "2.0", "result": "0x" + bytes(tx_hash).hex()}

    return LockedEthereumTesterProvider(evm.tester)


class EthTesterChain(Chain):
    """The embedded chain (``eth-tester://`` on disk, ``eth-tester://memory`` in memory)."""

    kind = "eth-tester"

    def __init__(self, url: str, settings: NodeSettings, directory: Path | None):
        from web3 import Web3

        self.evm = EmbeddedEVM(settings, directory)
        try:
            super().__init__(Web3(_locked_provider(self.evm)), url, settings)
        except BaseException:
            self.evm.close()
            raise
        self.directory = directory

    def _sign_and_send(self, tx, sender):
        # eth-tester rejects a nonce gap instead of queueing it: allocate + send under one lock.
        with self.evm.lock:
            return super()._sign_and_send(tx, sender)

    def _send_batch(self, items, chunk):
        with self.evm.lock:
            return super()._send_batch(items, chunk)

    def _revert_data(self, call: dict, block) -> bytes:
        from eth_utils import to_canonical_address

        tx = {"from": to_canonical_address(call["from"]), "value": int(call.get("value", 0)),
              "data": as_bytes(call.get("data"))}
        if call.get("to"):
            tx["to"] = to_canonical_address(call["to"])
        if call.get("gas"):
            tx["gas"] = int(call["gas"])
        with self.evm.lock:
            return self.evm.backend.revert_data(tx, block)

    def _mined_revert_data(self, receipt, call: dict) -> bytes:
        with self.evm.lock:
            try:
                return self.evm.backend.mined_revert_data(bytes(receipt["transactionHash"]))
            except Exception as e:  # fall back to the parent-state replay
                log.debug("exact revert replay failed (%s); replaying on the parent block", e)
        return super()._mined_revert_data(receipt, call)

    def automine(self, enabled: bool) -> None:
        with self.evm.lock:
            self.evm.automine = bool(enabled)
            self._automine = bool(enabled)
            if enabled and self.evm.backend.queue:
                self.mine_block()

    def mine_block(self, timestamp: int | None = None) -> int:
        with self.evm.lock:
            backend = self.evm.backend
            if timestamp is not None:
                latest = int(self.evm.tester.get_block_by_number("latest")["timestamp"])
                if timestamp <= latest:
                    raise ConfigError(f"mine_block: timestamp {timestamp} must be after the latest "
                                      f"block's {latest}")
                backend.time_offset = max(backend.time_offset, int(timestamp) - int(time.time()))
            if backend.queue or backend.chain.header.gas_used == 0:
                backend.mine_queue(timestamp)
            else:  # a block already holds applied transactions: keep their timestamp
                self.evm.tester.mine_blocks(1)
            return int(self.evm.tester.get_block_by_number("latest")["number"])

    def advance_time(self, seconds: int) -> int:
        if seconds < 0:
            raise ConfigError(f"advance_time: seconds must be >= 0, got {seconds}")
        with self.evm.lock:
            target = max(self.latest_timestamp(), int(time.time()) + self.evm.backend.time_offset) + int(seconds)
            self.evm.backend.time_offset = target - int(time.time())
            self.mine_block(target)
            return target

    def close(self) -> None:
        self.evm.close()
