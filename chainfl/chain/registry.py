"""Python client of the ChainflRegistry contract (see ARCHITECTURE.md, ``chain/``).

A :class:`Registry` wraps one deployed registry on one :class:`chainfl.chain.Chain`. Writes go
through ``chain.transact``; a revert comes back as ``TransactionError.revert_data`` and is re-raised
as the typed :class:`chainfl.errors.ContractError` subclass named after the Solidity error
(``chainfl.chain.errors``), the same on every backend. Reads are plain ``eth_call`` views.
History is read from events (:meth:`Registry.events`), in bounded block ranges.

Digests are 32 raw bytes (``0x``-hex strings are accepted too); ``loss`` is a float stored as
``uint32(round(loss * 1e6))``; accounts are addresses or ``LocalAccount`` objects.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Iterable

from eth_utils import to_checksum_address
from web3._utils.events import get_event_data

from chainfl.chain.compile import load_artifact
from chainfl.chain.errors import decode_revert, error_selectors
from chainfl.errors import ChainflError, DeploymentError, TransactionError

__all__ = ["Mode", "TaskState", "NodeState", "Event", "Registry", "RegistryArgumentError", "RoundDecision",
           "LOSS_SCALE", "EVENT_NAMES", "MAX_REASON_BYTES", "INCLUDED", "EXCLUDED", "FLAGGED"]

LOSS_SCALE = 1_000_000
_UINT32_MAX = 2**32 - 1
_ZERO_ADDRESS = "0x" + "00" * 20
ZERO32 = b"\0" * 32
#: The contract's MAX_REASON_LENGTH: longer reasons are cut (at a UTF-8 boundary) before sending.
MAX_REASON_BYTES = 256
#: Decision codes of a federated round (the contract's ``Decision.codes``).
INCLUDED, EXCLUDED, FLAGGED = 0, 1, 2


class RegistryArgumentError(ChainflError):
    """A value passed to the registry client cannot be encoded (bad digest, loss, address...)."""


class Mode(enum.IntEnum):
    """Task mode, as the contract's ``Mode`` enum (0 means "no such task")."""

    CHAINED = 1
    FEDERATED = 2


@dataclass(frozen=True)
class TaskState:
    """A task as stored on chain (``ChainflRegistry.task``)."""

    task_id: int
    mode: Mode
    closed: bool
    round_open: bool       # federated: the current round accepts updates
    coordinator: str       # the task's creator
    expected: str | None   # chained: whose turn it is
    head_node: str | None  # chained: producer of the unaccepted head, None once accepted
    seq: int               # chained: handoffs recorded; federated: current round
    deadline: int          # federated: unix deadline of the current round (0 before round 1)
    head: bytes            # chained: latest model; federated: current global model
    accepted: bytes        # chained: last accepted model; federated: equals head
    node_count: int = 0    # size of the task's node set (fixed at creation)
    round_submissions: int = 0   # federated: updates submitted to the current round

    @property
    def round(self) -> int:
        """Federated: the current (last opened) round, 0 before the first."""
        return self.seq


@dataclass(frozen=True)
class NodeState:
    """An account's roles and counters (``ChainflRegistry.node``)."""

    address: str
    member: bool
    coordinator: bool
    handoffs: int
    updates: int
    rejections_issued: int
    rejections_received: int
    flags: int


@dataclass(frozen=True)
class Event:
    """One decoded registry event. ``args`` keep Solidity names; bytes32 are raw ``bytes``."""

    name: str
    args: dict
    block_number: int
    tx_hash: str
    log_index: int


@dataclass(frozen=True)
class RoundDecision:
    """How a federated round ends, for every node that submitted to it (the contract's
    ``Decision``): ``included`` in the aggregate, ``excluded`` without blame (not selected by the
    rule, e.g. Krum), or ``flagged`` (node -> reason). ``evidence_digest``/``evidence_cid`` name an
    optional blob with the decision's off-chain inputs (peer score reports)."""

    included: tuple = ()
    excluded: tuple = ()
    flagged: dict = None
    evidence_digest: bytes | None = None
    evidence_cid: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "included", tuple(_address(n) for n in self.included))
        object.__setattr__(self, "excluded", tuple(_address(n) for n in self.excluded))
        object.__setattr__(self, "flagged", {_address(n): str(r) for n, r in (self.flagged or {}).items()})
        everyone = list(self.included) + list(self.excluded) + list(self.flagged)
        if len({a.lower() for a in everyone}) != len(everyone):
            raise RegistryArgumentError("a node appears more than once in a round decision")

    def args(self) -> tuple:
        """``(nodes, codes, reasons, evidenceDigest, evidenceCid)``: nodes ascending by address."""
        codes = {a: INCLUDED for a in self.included} | {a: EXCLUDED for a in self.excluded} \
            | {a: FLAGGED for a in self.flagged}
        nodes = sorted(codes, key=lambda a: int(a, 16))
        reasons = [clip_reason(self.flagged[a]) for a in nodes if codes[a] == FLAGGED]
        digest = ZERO32 if self.evidence_digest is None else _bytes32(self.evidence_digest, "evidence_digest")
        return (nodes, bytes(codes[a] for a in nodes), reasons, digest, str(self.evidence_cid or ""))

    def __len__(self) -> int:
        return len(self.included) + len(self.excluded) + len(self.flagged)


def clip_reason(reason: str, limit: int = MAX_REASON_BYTES) -> str:
    """``reason`` cut to at most ``limit`` UTF-8 bytes (at a character boundary)."""
    data = str(reason).encode("utf-8")
    if len(data) <= limit:
        return str(reason)
    return data[:limit].decode("utf-8", errors="ignore")


def _address(value) -> str:
    value = getattr(value, "address", value)
    try:
        return to_checksum_address(value)
    except (TypeError, ValueError) as e:
        raise RegistryArgumentError(f"{value!r} is not an Ethereum address (0x + 40 hex digits)") from e


def _optional_address(value) -> str:
    return _ZERO_ADDRESS if value is None else _address(value)


def _bytes32(value, what: str) -> bytes:
    if isinstance(value, str):
        text = value[2:] if value.startswith("0x") else value
        try:
            value = bytes.fromhex(text)
        except ValueError as e:
            raise RegistryArgumentError(f"{what} {value!r} is not hex") from e
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise RegistryArgumentError(f"{what} must be 32 bytes (sha256 digest), got {value!r}")
    return bytes(value)


def loss_to_e6(loss: float) -> int:
    """``uint32(round(loss * 1e6))``; raises :class:`RegistryArgumentError` outside [0, 4294.967295]."""
    loss = float(loss)
    if not math.isfinite(loss) or loss < 0:
        raise RegistryArgumentError(f"loss must be a finite number >= 0, got {loss}")
    value = int(round(loss * LOSS_SCALE))
    if value > _UINT32_MAX:
        raise RegistryArgumentError(f"loss {loss} is too large to record (max {_UINT32_MAX / LOSS_SCALE})")
    return value


def _uint(value, what: str, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise RegistryArgumentError(f"{what} must be an integer in [0, 2**{bits}), got {value!r}")
    return value


def _none_if_zero(address: str) -> str | None:
    return None if int(address, 16) == 0 else to_checksum_address(address)


def _plain(value):
    """web3's AttributeDict/HexBytes/tuples -> dict/bytes/list, recursively."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    return value


_ARTIFACT: dict | None = None


def registry_artifact() -> dict:
    """The committed registry artifact (loaded once per process)."""
    global _ARTIFACT
    if _ARTIFACT is None:
        _ARTIFACT = load_artifact()
    return _ARTIFACT


#: Names of every event the registry emits.
EVENT_NAMES = tuple(e["name"] for e in registry_artifact()["abi"] if e["type"] == "event")


#: Gas limit per registry function: at least 2x the gas measured by ``benchmarks/gas.py`` (see
#: ``benchmarks/results/gas.md``), plus a per-byte allowance for free-text reasons and a per-node
#: allowance for ``finalizeRound``. Sending with a limit skips ``eth_estimateGas`` (one round
#: trip less on HTTP nodes; on eth-tester an estimate replays the transaction ~14 times). A
#: reverting call then fails on chain instead of at estimation; the revert is decoded the same way.
GAS_LIMITS: dict[str, int] = {
    "addNode": 100_000, "removeNode": 80_000, "setCoordinator": 100_000, "transferAdmin": 80_000,
    "createTask": 300_000, "closeTask": 100_000,
    "recordHandoff": 150_000, "rejectHandoff": 120_000, "skipTurn": 100_000,
    "openRound": 120_000, "submitUpdate": 150_000, "finalizeRound": 150_000, "abandonRound": 120_000,
}
GAS_PER_REASON_BYTE = 64
GAS_PER_TASK_NODE = 40_000        # createTask: one seat slot per node (25.7k measured; 512 nodes fit a 30M block)
GAS_PER_DECIDED_NODE = 8_000      # finalize/abandon: per decided node (~2.7k measured)
GAS_PER_FLAG = 30_000             # ... plus per flag (counter + event, ~8k measured)


class Registry:
    """One deployed ChainflRegistry. Make one with :meth:`deploy` or :meth:`at`.

    ``fixed_gas`` (default True) sends each call with the limit from :data:`GAS_LIMITS` instead
    of estimating it; pass False to estimate every transaction.
    """

    def __init__(self, chain, address: str, artifact: dict | None = None, fixed_gas: bool = True):
        self.chain = chain
        self.fixed_gas = fixed_gas
        self.deployment_receipt = None  # set by deploy()
        self.artifact = artifact or registry_artifact()
        self.address = to_checksum_address(address)
        self.contract = chain.w3.eth.contract(address=self.address, abi=self.artifact["abi"])
        self._selectors = error_selectors(self.artifact["abi"])
        self._events = {}
        for entry in self.artifact["abi"]:
            if entry["type"] == "event":
                topic = self.chain.w3.keccak(text=f"{entry['name']}({','.join(i['type'] for i in entry['inputs'])})")
                self._events[bytes(topic)] = entry

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def deploy(cls, chain, admin, artifact: dict | None = None, fixed_gas: bool = True) -> "Registry":
        """Deploy a new registry from ``admin`` (a LocalAccount), who becomes its admin."""
        artifact = artifact or registry_artifact()
        factory = chain.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = cls._send(chain, error_selectors(artifact["abi"]), factory.constructor(), admin, None)
        address = receipt["contractAddress"]
        if not address:
            raise DeploymentError(f"the deployment transaction {receipt['transactionHash'].hex()} "
                                  f"created no contract; check the chain at {chain.url}")
        registry = cls(chain, address, artifact, fixed_gas)
        registry.deployment_receipt = receipt
        return registry

    @classmethod
    def at(cls, chain, address: str, artifact: dict | None = None, verify: bool = True,
           fixed_gas: bool = True) -> "Registry":
        """The registry at ``address``; with ``verify``, checks that the code there is chainfl's."""
        artifact = artifact or registry_artifact()
        address = _address(address)
        if verify:
            code = bytes(chain.w3.eth.get_code(address))
            expected = bytes.fromhex(artifact["deployedBytecode"][2:])
            if not code:
                raise DeploymentError(f"no contract at {address} on {chain.url}; deploy one with "
                                      f"`chainfl deploy` (the chain may have been reset)")
            if code != expected:
                raise DeploymentError(f"the contract at {address} on {chain.url} is not this chainfl "
                                      f"registry (runtime code differs); redeploy with `chainfl deploy`")
        return cls(chain, address, artifact, fixed_gas)

    # -- sending -----------------------------------------------------------------------------
    @staticmethod
    def _send(chain, selectors, fn, sender, gas):
        try:
            return chain.transact(fn, sender, gas=gas)
        except TransactionError as e:
            revert_data = getattr(e, "revert_data", b"")
            typed = decode_revert(revert_data, selectors)
            if typed is None:
                raise
            typed.revert_data = revert_data                  # same attributes as the backend's error
            typed.receipt = getattr(e, "receipt", None)      # set when the revert was mined
            raise typed from e

    def _transact(self, fn, sender, gas: int | None = None, extra: int = 0):
        if gas is None and self.fixed_gas and fn.fn_name in GAS_LIMITS:
            gas = GAS_LIMITS[fn.fn_name] + extra
        return self._send(self.chain, self._selectors, fn, sender, gas)

    def _event_from(self, receipt, name: str) -> dict:
        for log in receipt["logs"]:
            topics = log["topics"]
            if log["address"] == self.address and topics and self._events.get(bytes(topics[0]), {}).get("name") == name:
                return _plain(get_event_data(self.chain.w3.codec, self._events[bytes(topics[0])], log)["args"])
        raise TransactionError(f"transaction {receipt['transactionHash'].hex()} emitted no {name} event")

    # -- membership --------------------------------------------------------------------------
    def add_node(self, account, sender):
        """Register ``account`` as a member (admin only). Returns the receipt."""
        return self._transact(self.contract.functions.addNode(_address(account)), sender)

    def remove_node(self, account, sender):
        """Remove member ``account`` (admin only); its counters are kept."""
        return self._transact(self.contract.functions.removeNode(_address(account)), sender)

    def set_coordinator(self, account, enabled: bool, sender):
        """Grant (``enabled=True``) or revoke the coordinator role (admin only)."""
        return self._transact(self.contract.functions.setCoordinator(_address(account), bool(enabled)), sender)

    def transfer_admin(self, new_admin, sender):
        """Hand the admin role to ``new_admin`` (admin only)."""
        return self._transact(self.contract.functions.transferAdmin(_address(new_admin)), sender)

    # -- tasks -------------------------------------------------------------------------------
    def create_task(self, config_digest, config_cid: str, mode: Mode, initial_digest, initial_cid: str,
                    nodes, sender) -> int:
        """Create a task (coordinator role) with node set ``nodes`` (chained: the visiting order,
        ``nodes[0]`` first); returns its id."""
        node_list = [_address(n) for n in nodes]
        fn = self.contract.functions.createTask(
            _bytes32(config_digest, "config_digest"), str(config_cid), int(Mode(mode)),
            _bytes32(initial_digest, "initial_digest"), str(initial_cid), node_list)
        receipt = self._transact(fn, sender, extra=GAS_PER_TASK_NODE * len(node_list))
        return int(self._event_from(receipt, "TaskCreated")["taskId"])

    def close_task(self, task_id: int, release_digest, release_cid: str | None, sender, reason: str = "",
                   evidence_digest=None, evidence_cid: str | None = None):
        """Close a task (its coordinator only), anchoring the released model's digest + CID, the
        ``reason`` it ends and an optional evidence blob (the reports the end was computed from) in
        the TaskClosed event; pass ``None, None`` to close without a release."""
        digest = ZERO32 if release_digest is None else _bytes32(release_digest, "release_digest")
        evidence = ZERO32 if evidence_digest is None else _bytes32(evidence_digest, "evidence_digest")
        reason = clip_reason(reason)
        fn = self.contract.functions.closeTask(_uint(task_id, "task_id", 256), digest, str(release_cid or ""),
                                               reason, evidence, str(evidence_cid or ""))
        return self._transact(fn, sender, extra=GAS_PER_REASON_BYTE * len(reason.encode()))

    # -- chained mode ----------------------------------------------------------------------
    def record_handoff(self, task_id: int, parent, digest, cid: str, samples: int, loss: float,
                       next_node, sender, gas: int | None = None):
        """Record that ``sender`` trained ``parent`` (the head) into ``digest`` and hands over to ``next_node``."""
        fn = self.contract.functions.recordHandoff(
            _uint(task_id, "task_id", 256), _bytes32(parent, "parent"), _bytes32(digest, "digest"), str(cid),
            _uint(samples, "samples", 64), loss_to_e6(loss), _address(next_node))
        return self._transact(fn, sender, gas)

    def reject_handoff(self, task_id: int, digest, reason: str, sender):
        """Reject the unaccepted head ``digest`` (only the node whose turn it is)."""
        reason = clip_reason(reason)
        fn = self.contract.functions.rejectHandoff(_uint(task_id, "task_id", 256), _bytes32(digest, "digest"),
                                                   reason)
        return self._transact(fn, sender, extra=GAS_PER_REASON_BYTE * len(reason.encode()))

    def skip_turn(self, task_id: int, next_node, sender):
        """Pass the turn to ``next_node`` (task coordinator; the expected node is offline)."""
        return self._transact(self.contract.functions.skipTurn(_uint(task_id, "task_id", 256),
                                                               _address(next_node)), sender)

    # -- federated mode --------------------------------------------------------------------
    def open_round(self, task_id: int, deadline: int, sender) -> int:
        """Open the next round with unix ``deadline`` (task coordinator); returns the round number."""
        receipt = self._transact(self.contract.functions.openRound(_uint(task_id, "task_id", 256),
                                                                   _uint(int(deadline), "deadline", 64)), sender)
        return int(self._event_from(receipt, "RoundOpened")["round"])

    def submit_update(self, task_id: int, round_: int, parent, digest, cid: str, samples: int, loss: float,
                      sender, gas: int | None = None):
        """Submit ``sender``'s update for the open round (members, once per round, before the deadline)."""
        fn = self.contract.functions.submitUpdate(
            _uint(task_id, "task_id", 256), _uint(round_, "round", 64), _bytes32(parent, "parent"),
            _bytes32(digest, "digest"), str(cid), _uint(samples, "samples", 64), loss_to_e6(loss))
        return self._transact(fn, sender, gas)

    def finalize_round(self, task_id: int, round_: int, digest, cid: str, decision: RoundDecision, sender):
        """End the open round with the aggregate ``digest``/``cid`` and ``decision`` on every update
        submitted to it (task coordinator; at least one included)."""
        fn = self.contract.functions.finalizeRound(_uint(task_id, "task_id", 256), _uint(round_, "round", 64),
                                                   _bytes32(digest, "digest"), str(cid), decision.args())
        return self._transact(fn, sender, extra=self._decision_gas(decision))

    def abandon_round(self, task_id: int, round_: int, decision: RoundDecision, reason: str, sender):
        """End the open round without an aggregate (the global model stays), with ``decision`` on
        every submitted update (none included) and the ``reason`` (task coordinator)."""
        reason = clip_reason(reason)
        fn = self.contract.functions.abandonRound(_uint(task_id, "task_id", 256), _uint(round_, "round", 64),
                                                  decision.args(), reason)
        return self._transact(fn, sender, extra=self._decision_gas(decision)
                              + GAS_PER_REASON_BYTE * len(reason.encode()))

    @staticmethod
    def _decision_gas(decision: RoundDecision) -> int:
        reasons = sum(len(clip_reason(r).encode()) for r in decision.flagged.values())
        return (GAS_PER_DECIDED_NODE * len(decision) + GAS_PER_FLAG * len(decision.flagged)
                + GAS_PER_REASON_BYTE * reasons)

    # -- views -------------------------------------------------------------------------------
    def admin(self) -> str:
        return to_checksum_address(self.contract.functions.admin().call())

    def task_count(self) -> int:
        return int(self.contract.functions.taskCount().call())

    def task(self, task_id: int) -> TaskState:
        """The task's state; raises :class:`~chainfl.chain.errors.RegistryUnknownTask` for an unknown id."""
        from chainfl.chain.errors import RegistryUnknownTask

        v = self.contract.functions.task(_uint(task_id, "task_id", 256)).call()
        (mode, closed, round_open, coordinator, expected, head_node, seq, deadline, head, accepted,
         node_count, round_submissions) = v
        if mode == 0:
            raise RegistryUnknownTask.from_args({"taskId": task_id})
        return TaskState(task_id=task_id, mode=Mode(mode), closed=closed, round_open=round_open,
                         coordinator=to_checksum_address(coordinator), expected=_none_if_zero(expected),
                         head_node=_none_if_zero(head_node), seq=seq, deadline=deadline,
                         head=bytes(head), accepted=bytes(accepted), node_count=int(node_count),
                         round_submissions=int(round_submissions))

    def node(self, account) -> NodeState:
        """Roles and counters of ``account`` (all zero/False for an unknown account)."""
        address = _address(account)
        member, coordinator, handoffs, updates, issued, received, flags = \
            self.contract.functions.node(address).call()
        return NodeState(address=address, member=member, coordinator=coordinator, handoffs=handoffs,
                         updates=updates, rejections_issued=issued, rejections_received=received, flags=flags)

    def has_submitted(self, task_id: int, round_: int, node) -> bool:
        """Whether ``node`` submitted to ``round_`` (its latest round; older rounds: use events)."""
        return bool(self.contract.functions.hasSubmitted(_uint(task_id, "task_id", 256),
                                                         _uint(round_, "round", 64), _address(node)).call())

    def seat(self, task_id: int, node) -> tuple[bool, int]:
        """``(in_task, last_round)``: whether ``node`` is one of the task's nodes, and the latest
        round it submitted to (0 = never)."""
        in_task, last = self.contract.functions.seat(_uint(task_id, "task_id", 256), _address(node)).call()
        return bool(in_task), int(last)

    # -- history -----------------------------------------------------------------------------
    def events(self, from_block: int = 0, to_block: int | None = None, task_id: int | None = None,
               names: Iterable[str] | None = None, chunk: int = 2000) -> list[Event]:
        """Registry events in ``[from_block, to_block]`` (default: up to the latest block), ordered
        by (block, log index), fetched ``chunk`` blocks per query. ``task_id`` keeps only that
        task's events; ``names`` only those event names."""
        w3 = self.chain.w3
        if to_block is None:
            to_block = int(w3.eth.block_number)
        if chunk < 1:
            raise RegistryArgumentError(f"chunk must be >= 1, got {chunk}")
        wanted = None
        if names is not None:
            wanted = set(names)
            unknown = wanted - set(EVENT_NAMES)
            if unknown:
                raise RegistryArgumentError(f"unknown event name(s) {sorted(unknown)}; known: {', '.join(EVENT_NAMES)}")
        out: list[Event] = []
        start = max(int(from_block), 0)
        while start <= to_block:
            end = min(start + chunk - 1, to_block)
            logs = w3.eth.get_logs({"address": self.address, "fromBlock": start, "toBlock": end})
            for log in logs:
                event = self._decode(log)
                if event is None:
                    continue
                if wanted is not None and event.name not in wanted:
                    continue
                if task_id is not None and event.args.get("taskId") != task_id:
                    continue
                out.append(event)
            start = end + 1
        out.sort(key=lambda e: (e.block_number, e.log_index))
        return out

    def receipt_events(self, receipt) -> list[Event]:
        """The registry events a transaction emitted, in log order."""
        events = [self._decode(log) for log in receipt["logs"] if log["address"] == self.address]
        return [e for e in events if e is not None]

    def _decode(self, log) -> Event | None:
        topics = log["topics"]
        entry = self._events.get(bytes(topics[0])) if topics else None
        if entry is None:
            return None
        data = get_event_data(self.chain.w3.codec, entry, log)
        tx_hash = bytes(data["transactionHash"]).hex()
        return Event(name=data["event"], args=_plain(data["args"]), block_number=int(data["blockNumber"]),
                     tx_hash=tx_hash if tx_hash.startswith("0x") else "0x" + tx_hash,
                     log_index=int(data["logIndex"]))

    def __repr__(self) -> str:
        return f"Registry({self.address} on {self.chain.url})"
