"""Account features from raw chain blocks, with the eth_fraud dataset's names and meanings.

Two layers:

* a pure core — :class:`Tx` records folded into a :class:`FeatureState` (per-account counters kept
  in **integer wei and integer seconds**, so any split of the block range into passes gives
  bit-identical results), and :meth:`FeatureState.features` turning the counters into the
  features of :data:`chainfl.data.schema.DERIVED_FROM_CHAIN`;
* :func:`extract_features`, the thin I/O layer: reads blocks with full transactions in JSON-RPC
  batches (when the provider supports batches; else one request per block, never one per
  transaction), the receipts of contract-creation transactions only, and ``eth_getCode`` at the
  **latest** block once per new recipient (batched); it shows a tqdm progress bar on stderr.

**Ordinary (non-archive) nodes.** Nothing is read at a past block: blocks, transactions and receipts
are block data, which every full node serves for the blocks it has, and code is read at ``latest``,
the one state every node holds. (An archive-only call such as ``eth_getCode(address, 1)`` fails on
a node without history, e.g. ``BlockOutOfRangeError`` on Anvil ``--prune-history``.) So an archive
node and an ordinary node give bit-identical features for the same blocks read at the same latest
state (``tests/data/test_features_nodes.py``).

What is and is not counted: every transaction in a block counts, whatever its execution status
(the status is in the receipt, and fetching receipts would cost one request per transaction);
value moved by contracts internally (internal transactions) is not visible in blocks and is not
counted; ERC20 transfers are not decoded. A transaction creating a contract counts as a created
contract of the sender (not as a sent transaction) and its value as ether sent to a contract.

**Which recipients are contracts** — decided when an address is first seen (as a recipient or as a
created contract), and changed only by its creation:

1. a contract-creation transaction of the range that succeeded (receipt ``status`` 1) created it
   (the address is the receipt's ``contractAddress``) in an earlier block or the same block; from
   its creation on an address is a contract even if it destroyed itself later;
2. otherwise, it has code at the latest block when it is first seen; an EIP-7702 delegation
   designator (``0xef0100`` + address: an externally owned account that delegates to code) counts
   as no code — the account still holds a key and sends its own transactions.

This is exact — the status an address had in the block where it was first seen — except for an
address whose code at the latest block differs from its code then, which only happens when

* a contract received ether in the range and self-destructed before the latest block without
  having been created by a top-level transaction of the range: counted as an externally owned
  account. Since the Cancun upgrade (EIP-6780, mainnet March 2024) SELFDESTRUCT removes code only
  in the transaction that created the contract, so on such chains this can only affect
  self-destructions before the upgrade;
* code was deployed later at an address that had already been paid in the range (a CREATE2 or
  CREATE to a precomputed address by a contract — a "counterfactual" wallet): counted as a contract
  from the start. Top-level creations are not affected (rule 1 and their receipts).

Those are also the only accounts whose features can change when the same blocks are read again
later (or a resumed extraction meets a later latest state). A failed creation (receipt ``status`` 0)
still counts as a created contract of its sender, but its address holds no code and is not a
contract.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from chainfl.data import schema
from chainfl.data.datasets import Dataset
from chainfl.errors import ChainError, DataError

WEI = 10**18


@dataclass(frozen=True)
class Tx:
    """One transaction as the feature code sees it (addresses lower-case ``0x`` hex)."""

    block: int
    timestamp: int              # block timestamp, seconds
    sender: str
    to: str | None              # None for a contract creation
    value: int                  # wei
    created: str | None = None  # address of the created contract (creations only)


def contract_address(sender: str, nonce: int) -> str:
    """Address of the contract created by ``sender``'s transaction with ``nonce`` (CREATE)."""
    import rlp
    from eth_utils import keccak, to_bytes

    return "0x" + keccak(rlp.encode([to_bytes(hexstr=sender), nonce]))[12:].hex()


def _new_account() -> dict:
    # n / sum / min / max of values (wei); times (s); counterparties; first block seen.
    return {"n_sent": 0, "sent": [0, 0, None, None], "sent_contract": [0, 0, None, None], "recv": [0, 0, None, None],
            "created": 0, "sent_to": set(), "recv_from": set(),
            "sent_t": [None, None], "recv_t": [None, None], "all_t": [None, None], "first_block": None}


def _add_value(acc: list, value: int) -> None:
    acc[0] += 1
    acc[1] += value
    acc[2] = value if acc[2] is None else min(acc[2], value)
    acc[3] = value if acc[3] is None else max(acc[3], value)


def _add_time(acc: list, t: int) -> None:
    acc[0] = t if acc[0] is None else min(acc[0], t)
    acc[1] = t if acc[1] is None else max(acc[1], t)


@dataclass
class FeatureState:
    """Per-account counters for blocks ``< next_block``; JSON-serialisable, resumable."""

    next_block: int = 0
    accounts: dict = field(default_factory=dict)     # address -> counters (see _new_account)
    contracts: dict = field(default_factory=dict)    # address -> bool (has code)

    # --- pure accumulation -----------------------------------------------------------------
    def _account(self, address: str, block: int) -> dict:
        acc = self.accounts.get(address)
        if acc is None:
            acc = self.accounts[address] = _new_account()
            acc["first_block"] = block
        return acc

    def add(self, tx: Tx) -> None:
        """Fold one transaction in. Its recipient's contract status must already be known."""
        s = self._account(tx.sender, tx.block)
        _add_time(s["all_t"], tx.timestamp)
        if tx.to is None:
            s["created"] += 1
            _add_value(s["sent_contract"], tx.value)
            if tx.created:
                self.contracts[tx.created] = True
            return
        r = self._account(tx.to, tx.block)
        s["sent_to"].add(tx.to)
        _add_time(s["sent_t"], tx.timestamp)
        _add_value(s["sent_contract"] if self.contracts.get(tx.to) else s["sent"], tx.value)
        s["n_sent"] += 1
        r["recv_from"].add(tx.sender)
        _add_time(r["recv_t"], tx.timestamp)
        _add_time(r["all_t"], tx.timestamp)
        _add_value(r["recv"], tx.value)

    def add_all(self, txs: Iterable[Tx], next_block: int | None = None) -> "FeatureState":
        """Fold transactions in (pure: no chain access; recipients unknown as contracts count as
        externally owned unless created by an earlier transaction)."""
        for tx in txs:
            self.add(tx)
        if next_block is not None:
            self.next_block = next_block
        return self

    # --- features --------------------------------------------------------------------------
    def features(self, address: str) -> dict[str, float]:
        """The :data:`schema.DERIVED_FROM_CHAIN` features of one address (values in ether, minutes)."""
        a = self.accounts[address]
        n_sent = a["n_sent"]
        n_recv = a["recv"][0]

        def gap(times, n):
            return (times[1] - times[0]) / 60.0 / (n - 1) if n > 1 else 0.0

        def stats(acc):
            n, total, lo, hi = acc
            return (lo / WEI, hi / WEI, total / n / WEI) if n else (0.0, 0.0, 0.0)

        rmin, rmax, ravg = stats(a["recv"])
        smin, smax, savg = stats(a["sent"])
        cmin, cmax, cavg = stats(a["sent_contract"])
        span = (a["all_t"][1] - a["all_t"][0]) / 60.0 if a["all_t"][0] is not None else 0.0
        sent_total, recv_total, contract_total = a["sent"][1], a["recv"][1], a["sent_contract"][1]
        out = {
            "Avg min between sent tnx": gap(a["sent_t"], n_sent),
            "Avg min between received tnx": gap(a["recv_t"], n_recv),
            "Time Diff between first and last (Mins)": span,
            "Sent tnx": float(n_sent),
            "Received Tnx": float(n_recv),
            "Number of Created Contracts": float(a["created"]),
            "Unique Received From Addresses": float(len(a["recv_from"])),
            "Unique Sent To Addresses": float(len(a["sent_to"])),
            "min value received": rmin, "max value received": rmax, "avg val received": ravg,
            "min val sent": smin, "max val sent": smax, "avg val sent": savg,
            "min value sent to contract": cmin, "max val sent to contract": cmax,
            "avg value sent to contract": cavg,
            "total transactions (including tnx to create contract": float(n_sent + n_recv + a["created"]),
            "total Ether sent": sent_total / WEI,
            "total ether received": recv_total / WEI,
            "total ether sent contracts": contract_total / WEI,
            "total ether balance": (recv_total - sent_total - contract_total) / WEI,
        }
        assert tuple(out) == schema.DERIVED_FROM_CHAIN
        return out

    # --- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        def enc(a):
            out = dict(a)
            for k in ("sent_to", "recv_from"):
                out[k] = sorted(a[k])
            for k in _WEI_KEYS:          # wei sums exceed JSON's safe integers: strings
                out[k] = [None if x is None else str(x) for x in a[k]]
            return out
        return {"version": 1, "next_block": self.next_block,
                "accounts": {addr: enc(a) for addr, a in self.accounts.items()},
                "contracts": dict(self.contracts)}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureState":
        if d.get("version") != 1:
            raise DataError(f"unsupported feature state version {d.get('version')!r}; re-extract from block 0")
        accounts = {}
        for addr, a in d["accounts"].items():
            acc = dict(a)
            for k in ("sent_to", "recv_from"):
                acc[k] = set(a[k])
            for k in _WEI_KEYS:
                acc[k] = [int(x) if x is not None else None for x in a[k]]
            for k in ("sent_t", "recv_t", "all_t"):
                acc[k] = list(a[k])
            accounts[addr] = acc
        return cls(int(d["next_block"]), accounts, dict(d["contracts"]))

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> "FeatureState":
        return cls.from_dict(json.loads(text))


_WEI_KEYS = ("sent", "sent_contract", "recv")


@dataclass
class FeatureResult:
    """Features of every address seen so far; ``state`` resumes at ``state.next_block``."""

    state: FeatureState

    @property
    def addresses(self) -> list[str]:
        """Addresses in first-seen order (block, then address) — deterministic."""
        return sorted(self.state.accounts, key=lambda a: (self.state.accounts[a]["first_block"], a))

    def first_seen(self, addresses: list[str]) -> np.ndarray:
        """First block each address appears in (an ``order`` key for ``partition(scheme="blocks")``)."""
        return np.array([self.state.accounts[a]["first_block"] for a in addresses], dtype=np.int64)

    def dataset(self, labels: dict[str, int] | None = None, include_contracts: bool = False) -> Dataset:
        """A :class:`Dataset` of the :data:`schema.DERIVED_FROM_CHAIN` features.

        With ``labels`` (address -> 0/1) only labelled addresses are kept, in first-seen order;
        without, every address is kept with label -1 (unknown). Contracts are left out unless
        ``include_contracts``.
        """
        wanted = {a.lower(): int(v) for a, v in labels.items()} if labels is not None else None
        ids = [a for a in self.addresses
               if (include_contracts or not self.state.contracts.get(a))
               and (wanted is None or a in wanted)]
        X = np.array([list(self.state.features(a).values()) for a in ids], dtype=np.float64)
        X = X.reshape(len(ids), len(schema.DERIVED_FROM_CHAIN))
        y = [wanted[a] if wanted is not None else -1 for a in ids]
        return Dataset(X.astype(np.float32), np.array(y, dtype=np.int64), list(schema.DERIVED_FROM_CHAIN),
                       ids, "chain")


# --- I/O: reading blocks --------------------------------------------------------------------

#: EIP-7702 delegation designator prefix: code ``0xef0100 || address`` (23 bytes) marks an externally
#: owned account that delegates execution to ``address``.
DELEGATION_PREFIX = bytes.fromhex("ef0100")


def is_contract_code(code: bytes) -> bool:
    """Pure: whether code read from a chain makes its address a contract (see the module docstring):
    any code but an EIP-7702 delegation designator."""
    code = bytes(code)
    if len(code) == 23 and code.startswith(DELEGATION_PREFIX):
        return False
    return len(code) > 0


def _block_txs(block, created: dict[bytes, str | None]) -> list[Tx]:
    """A :class:`chainfl.data._rpc.RawBlock` as feature records; ``created`` maps each creation's
    hash to the contract it created (None when the creation failed)."""
    return [Tx(block.number, block.timestamp, t.sender, t.to, t.value, created.get(t.hash) if t.to is None else None)
            for t in block.txs]


def _created_contracts(w3, blocks) -> dict[bytes, str | None]:
    """tx hash -> created contract address (None if the creation failed), from the receipts of the
    creation transactions of ``blocks`` (one batch)."""
    from chainfl.data import _rpc

    hashes = [t.hash for b in blocks for t in b.txs if t.to is None]
    if not hashes:
        return {}
    return {r.tx_hash: (r.contract_address if r.status == 1 else None) for r in _rpc.receipts(w3, hashes)}


def extract_features(w3, from_block: int | None = None, to_block: int | None = None,
                     state: FeatureState | None = None, progress: bool = True,
                     batch_size: int = 50) -> FeatureResult:
    """Fold blocks ``from_block..to_block`` (inclusive) into ``state`` (a new one if None).

    Needs no archive state (see the module docstring). Resuming: pass the previous result's
    ``state`` and ``from_block=state.next_block`` (or None); the result equals one pass over the
    whole range. ``to_block`` None = latest block.
    """
    from chainfl.data import _rpc

    state = state if state is not None else FeatureState()
    if from_block is None:
        from_block = state.next_block
    if state.accounts and from_block != state.next_block:
        raise DataError(f"this feature state covers blocks < {state.next_block}; resume with "
                        f"from_block={state.next_block}, not {from_block}")
    try:
        latest = int(w3.eth.block_number)
    except Exception as e:  # provider errors vary by backend
        raise ChainError(f"cannot read the block number from the chain: {e}") from e
    to_block = latest if to_block is None else int(to_block)
    if from_block < 0 or to_block > latest:
        raise DataError(f"block range {from_block}..{to_block} is outside the chain (latest block {latest})")
    if from_block > to_block + 1:   # from == to + 1 is a resume with nothing new, which is fine
        raise DataError(f"block range {from_block}..{to_block} is empty: the first block is after the last "
                        f"(latest block {latest}); pass --from-block <= --to-block")
    from tqdm import tqdm

    bar = tqdm(total=max(0, to_block - from_block + 1), unit="block", desc="features",
               file=sys.stderr, disable=not progress)
    try:
        for start in range(from_block, to_block + 1, batch_size):
            numbers = list(range(start, min(start + batch_size, to_block + 1)))
            blocks = _rpc.fetch_blocks(w3, numbers)
            created = _created_contracts(w3, blocks)
            per_block = [_block_txs(block, created) for block in blocks]
            code = _latest_code(w3, state, [t for txs in per_block for t in txs])
            for block, txs in zip(blocks, per_block):
                _resolve_contracts(state, txs, code)
                state.add_all(txs)
                state.next_block = block.number + 1
            bar.update(len(numbers))
    finally:
        bar.close()
    state.next_block = max(state.next_block, to_block + 1)
    return FeatureResult(state)


def _latest_code(w3, state: FeatureState, txs: list[Tx]) -> dict[str, bool]:
    """Whether each recipient not yet known to ``state`` is a contract by its code at the latest
    block (one batched eth_getCode per address, for a whole batch of blocks)."""
    from chainfl.data import _rpc

    unknown = list(dict.fromkeys(t.to for t in txs if t.to and t.to not in state.contracts))
    if not unknown:
        return {}
    return {a: is_contract_code(c) for a, c in zip(unknown, _rpc.codes(w3, unknown))}


def _resolve_contracts(state: FeatureState, txs: list[Tx], code: dict[str, bool]) -> None:
    """Pure: fix the contract status of one block's new recipients (rules 1-2 of the module
    docstring) before its transactions are folded in."""
    for t in txs:                      # the node may order a call before the creation in a block
        if t.created:
            state.contracts[t.created] = True
    for t in txs:
        if t.to and t.to not in state.contracts:
            state.contracts[t.to] = code[t.to]
