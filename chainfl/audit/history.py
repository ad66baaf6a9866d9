"""Rebuild one task's training history from the registry's events alone.

Every task event carries the task id as its first indexed topic, so the history is read with
``eth_getLogs`` filtered on ``[any event, taskId]`` in bounded block ranges (``chunk`` blocks per
query). A node that refuses a range as too large (e.g. "query returned more than 10000 results")
gets it again in halves, so histories of 10,000+ events load on any backend.

The result is plain data: :class:`History` with the task's creation record, the chained steps
(handoffs, rejections, skipped turns) in chain order, the federated rounds (opened, submitted,
flagged, finalized) and the close record (with the release digest + CID once the contract records
them). Nothing here fetches blobs or judges the history: that is :mod:`chainfl.audit.verify`.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from dataclasses import dataclass, field

from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address

from chainfl.chain.registry import LOSS_SCALE, Mode
from chainfl.errors import AuditError, ChainError

log = logging.getLogger(__name__)

__all__ = ["Created", "Handoff", "Rejection", "Skip", "Submission", "Round", "Closed", "History",
           "load_history", "fetch_task_logs", "TASK_EVENTS"]

#: Registry events that belong to a task (their first indexed argument is ``taskId``).
TASK_EVENTS = ("TaskCreated", "TaskClosed", "HandoffRecorded", "HandoffRejected", "TurnSkipped",
               "RoundOpened", "UpdateSubmitted", "UpdateFlagged", "RoundFinalized", "RoundAbandoned")


def _hex(value: bytes | None) -> str | None:
    return None if value is None else "0x" + bytes(value).hex()


@dataclass(frozen=True)
class Where:
    """Where an event sits on chain."""

    block: int
    tx_hash: str
    log_index: int


@dataclass(frozen=True)
class Created:
    coordinator: str
    mode: Mode
    config_digest: bytes
    config_cid: str
    initial_digest: bytes
    initial_cid: str
    nodes: tuple[str, ...]          # the task's node set (chained: visiting order)
    at: Where

    @property
    def first_node(self) -> str | None:
        return self.nodes[0] if self.nodes else None


@dataclass(frozen=True)
class Handoff:
    """``node`` trained ``parent`` into ``digest`` and handed over to ``next``."""

    seq: int
    node: str
    next: str
    parent: bytes
    digest: bytes
    cid: str
    samples: int
    loss: float
    at: Where


@dataclass(frozen=True)
class Rejection:
    """``node`` (whose turn it was) rejected ``producer``'s head ``digest``; head -> ``restored``."""

    node: str
    producer: str
    digest: bytes
    restored: bytes
    reason: str
    at: Where


@dataclass(frozen=True)
class Skip:
    """The coordinator passed ``skipped``'s turn to ``next``."""

    skipped: str
    next: str
    by: str
    at: Where


@dataclass(frozen=True)
class Submission:
    round: int
    node: str
    parent: bytes
    digest: bytes
    cid: str
    samples: int
    loss: float
    at: Where


@dataclass
class Round:
    """One federated round as recorded: open until it is finalized (with an aggregate) or
    abandoned (without one)."""

    round: int
    global_model: bytes
    deadline: int
    opened_at: Where
    submissions: list[Submission] = field(default_factory=list)
    flags: dict[str, str] = field(default_factory=dict)          # node -> reason
    parent: bytes | None = None                                   # RoundFinalized.parent
    digest: bytes | None = None
    cid: str | None = None
    included: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)             # not selected by the rule (no blame)
    evidence_digest: bytes | None = None
    evidence_cid: str | None = None
    abandon_reason: str | None = None
    finalized_at: Where | None = None
    abandoned_at: Where | None = None

    @property
    def finalized(self) -> bool:
        return self.finalized_at is not None

    @property
    def abandoned(self) -> bool:
        return self.abandoned_at is not None

    @property
    def ended(self) -> bool:
        return self.finalized or self.abandoned


@dataclass(frozen=True)
class Closed:
    by: str
    release_digest: bytes | None      # None when the task closed without a release
    release_cid: str | None
    at: Where
    reason: str = ""
    evidence_digest: bytes | None = None   # the reports the threshold was computed from
    evidence_cid: str | None = None


@dataclass
class History:
    """Everything the chain says about one task, in chain order."""

    task_id: int
    registry: str
    created: Created
    steps: list = field(default_factory=list)        # chained: Handoff | Rejection | Skip, in order
    rounds: list[Round] = field(default_factory=list)  # federated, by round number as recorded
    closed: Closed | None = None
    events: int = 0                                   # task events read
    anomalies: list[str] = field(default_factory=list)  # events that fit no round (for verify)
    from_block: int = 0
    to_block: int = 0

    @property
    def mode(self) -> Mode:
        return self.created.mode

    @property
    def handoffs(self) -> list[Handoff]:
        return [s for s in self.steps if isinstance(s, Handoff)]


# --- log reading ------------------------------------------------------------------------------
def _topic(task_id: int) -> str:
    return "0x" + int(task_id).to_bytes(32, "big").hex()


def _too_large(e: Exception) -> bool:
    text = str(e).lower()
    return any(s in text for s in ("more than", "too many", "limit", "range", "exceed", "too large"))


def fetch_task_logs(w3, address: str, task_id: int, from_block: int, to_block: int,
                    chunk: int = 2000) -> list:
    """Raw logs of ``task_id`` at ``address`` in ``[from_block, to_block]``, ``chunk`` blocks per
    query (halved, down to one block, when a node refuses a range as too large)."""
    if chunk < 1:
        raise AuditError(f"chunk must be >= 1 block, got {chunk}")
    topics = [None, _topic(task_id)]
    out = []
    start = max(int(from_block), 0)
    size = int(chunk)
    while start <= to_block:
        end = min(start + size - 1, to_block)
        try:
            logs = _get_logs(w3, {"address": address, "fromBlock": start, "toBlock": end, "topics": topics})
        except Exception as e:  # provider errors differ by node; only "too large" is retried
            if size > 1 and _too_large(e):
                size = max(1, size // 2)
                log.info("log query %d..%d too large (%s); retrying with %d blocks", start, end, e, size)
                continue
            raise ChainError(f"reading registry logs {start}..{end} at {address} failed: {e}") from e
        out.extend(logs)
        start = end + 1
    return out


def _get_logs(w3, params: dict) -> list:
    """eth_getLogs; over HTTP the raw JSON-RPC result (web3's per-field result formatters cost more
    than the query itself for thousands of logs), elsewhere through web3."""
    provider = w3.provider
    if getattr(provider, "endpoint_uri", None) and not getattr(provider, "middlewares", None):
        raw = dict(params, fromBlock=hex(params["fromBlock"]), toBlock=hex(params["toBlock"]))
        response = provider.make_request("eth_getLogs", [raw])
        if "error" in response:
            error = response["error"]
            raise ValueError(error.get("message", error) if isinstance(error, dict) else error)
        return response["result"]
    return w3.eth.get_logs(params)


class _Decoder:
    """Decodes registry logs with the registry's ABI, directly with eth_abi (web3's generic
    ``get_event_data`` costs milliseconds per log; this is what makes 10,000+ events cheap)."""

    def __init__(self, abi: list[dict], codec=None):
        self.entries = {}
        for entry in abi:
            if entry["type"] == "event" and entry["name"] in TASK_EVENTS:
                signature = f"{entry['name']}({','.join(i['type'] for i in entry['inputs'])})"
                indexed = [(i["name"], i["type"]) for i in entry["inputs"] if i.get("indexed")]
                plain = [(i["name"], i["type"]) for i in entry["inputs"] if not i.get("indexed")]
                self.entries[keccak(text=signature)] = (entry["name"], indexed, plain)

    def decode(self, log) -> tuple[str, dict, Where] | None:
        topics = [bytes.fromhex(t[2:]) if isinstance(t, str) else bytes(t) for t in log["topics"]]
        found = self.entries.get(topics[0]) if topics else None
        if found is None:
            return None
        name, indexed, plain = found
        if len(topics) != len(indexed) + 1:
            return None              # same signature, different indexing: not this registry's event
        args = {}
        for (arg, typ), topic in zip(indexed, topics[1:]):
            if typ == "address":
                args[arg] = "0x" + topic[12:].hex()
            elif typ.startswith("uint"):
                args[arg] = int.from_bytes(topic, "big")
            else:
                args[arg] = abi_decode([typ], topic)[0]
        data = log["data"]
        data = bytes.fromhex(data[2:]) if isinstance(data, str) else bytes(data)
        for (arg, _), value in zip(plain, abi_decode([t for _, t in plain], data)):
            args[arg] = value
        tx = log["transactionHash"]
        tx = tx if isinstance(tx, str) else bytes(tx).hex()
        where = Where(_int(log["blockNumber"]), tx if tx.startswith("0x") else "0x" + tx,
                      _int(log["logIndex"]))
        return name, args, where


def _int(value) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


@lru_cache(maxsize=65536)
def checksum(address: str) -> str:
    """EIP-55 form of an address (cached: histories repeat the same few addresses)."""
    return to_checksum_address(address)


# --- history assembly -------------------------------------------------------------------------
def load_history(registry, task_id: int, from_block: int = 0, to_block: int | None = None,
                 chunk: int = 2000) -> History:
    """Read ``task_id``'s events from ``registry`` (a :class:`chainfl.chain.registry.Registry`) and
    assemble its :class:`History`. Raises :class:`AuditError` if the task was never created in the
    range read."""
    w3 = registry.chain.w3
    if to_block is None:
        to_block = int(w3.eth.block_number)
    logs = fetch_task_logs(w3, registry.address, task_id, from_block, to_block, chunk)
    decoder = _Decoder(registry.artifact["abi"])
    decoded = [d for d in (decoder.decode(log) for log in logs) if d is not None]
    decoded.sort(key=lambda d: (d[2].block, d[2].log_index))
    return assemble(task_id, registry.address, decoded, from_block, to_block)


def assemble(task_id: int, address: str, decoded: list[tuple[str, dict, Where]],
             from_block: int = 0, to_block: int = 0) -> History:
    """Pure: ordered ``(event name, args, where)`` triples -> :class:`History`."""
    created = None
    history: History | None = None
    pending: list[tuple[str, dict, Where]] = []
    for name, args, where in decoded:
        if args.get("taskId") != task_id:
            continue
        if name == "TaskCreated":
            if created is not None:
                raise AuditError(f"task {task_id} has two TaskCreated events (blocks "
                                 f"{created.at.block} and {where.block}); this is not a chainfl registry")
            created = Created(coordinator=checksum(args["coordinator"]), mode=Mode(args["mode"]),
                              config_digest=bytes(args["configDigest"]), config_cid=args["configCid"],
                              initial_digest=bytes(args["initialDigest"]), initial_cid=args["initialCid"],
                              nodes=tuple(checksum(n) for n in args["nodes"]), at=where)
            history = History(task_id, checksum(address), created,
                              from_block=from_block, to_block=to_block)
            continue
        if history is None:
            pending.append((name, args, where))
            continue
        _apply(history, name, args, where)
    if history is None:
        raise AuditError(f"task {task_id} has no TaskCreated event at registry {address} in blocks "
                         f"{from_block}..{to_block}; check --task, the registry address and --from-block")
    for name, _, where in pending:
        history.anomalies.append(f"{name} at block {where.block} precedes the task's creation")
    history.events = sum(1 for _, args, _ in decoded if args.get("taskId") == task_id)
    return history


def _apply(h: History, name: str, a: dict, where: Where) -> None:
    if name == "HandoffRecorded":
        h.steps.append(Handoff(seq=int(a["seq"]), node=checksum(a["node"]),
                               next=checksum(a["next"]), parent=bytes(a["parent"]),
                               digest=bytes(a["digest"]), cid=a["cid"], samples=int(a["samples"]),
                               loss=int(a["lossE6"]) / LOSS_SCALE, at=where))
    elif name == "HandoffRejected":
        h.steps.append(Rejection(node=checksum(a["node"]), producer=checksum(a["producer"]),
                                 digest=bytes(a["digest"]), restored=bytes(a["restored"]),
                                 reason=a["reason"], at=where))
    elif name == "TurnSkipped":
        h.steps.append(Skip(skipped=checksum(a["skipped"]), next=checksum(a["next"]),
                            by=checksum(a["by"]), at=where))
    elif name == "RoundOpened":
        h.rounds.append(Round(round=int(a["round"]), global_model=bytes(a["globalModel"]),
                              deadline=int(a["deadline"]), opened_at=where))
    elif name in ("UpdateSubmitted", "UpdateFlagged", "RoundFinalized", "RoundAbandoned"):
        number = int(a["round"])
        rnd = next((r for r in reversed(h.rounds) if r.round == number), None)
        if rnd is None:
            h.anomalies.append(f"{name} for round {number} at block {where.block}, but round {number} "
                               f"was never opened")
            return
        if name == "UpdateSubmitted":
            rnd.submissions.append(Submission(round=number, node=checksum(a["node"]),
                                              parent=bytes(a["parent"]), digest=bytes(a["digest"]),
                                              cid=a["cid"], samples=int(a["samples"]),
                                              loss=int(a["lossE6"]) / LOSS_SCALE, at=where))
        elif name == "UpdateFlagged":
            rnd.flags[checksum(a["node"])] = a["reason"]
        else:
            if rnd.ended:
                h.anomalies.append(f"round {number} ended twice (block {where.block})")
                return
            rnd.excluded = [checksum(n) for n in a["excluded"]]
            rnd.evidence_digest = bytes(a["evidenceDigest"]) if any(bytes(a["evidenceDigest"])) else None
            rnd.evidence_cid = a["evidenceCid"] or None
            if name == "RoundAbandoned":
                rnd.abandon_reason = a["reason"]
                rnd.abandoned_at = where
                return
            rnd.parent = bytes(a["parent"])
            rnd.digest = bytes(a["digest"])
            rnd.cid = a["cid"]
            rnd.included = [checksum(n) for n in a["included"]]
            rnd.finalized_at = where
    elif name == "TaskClosed":
        digest = a.get("releaseDigest")
        cid = a.get("releaseCid")
        if h.closed is not None:
            h.anomalies.append(f"task closed twice (blocks {h.closed.at.block} and {where.block})")
            return
        evidence = a.get("evidenceDigest")
        h.closed = Closed(by=checksum(a["by"]),
                          release_digest=bytes(digest) if digest and any(bytes(digest)) else None,
                          release_cid=cid or None, at=where, reason=a.get("reason", ""),
                          evidence_digest=bytes(evidence) if evidence and any(bytes(evidence)) else None,
                          evidence_cid=a.get("evidenceCid") or None)
