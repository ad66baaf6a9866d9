"""The task specification: everything a node, the coordinator and an auditor must agree on.

A :class:`TaskSpec` is stored as canonical JSON (sorted keys, compact separators, UTF-8) in the
store; the registry records its sha256 digest and CID when the task is created
(``createTask(configDigest, configCid, ...)``). Agents and auditors fetch it by CID, verify it
against the digest on chain, and rebuild from it the model (``model``), the local training
(``train``), the aggregation strategy (``strategy``, federated) or validation gate (``gate``,
chained), the normalisation (``scaler``) and the schedule (``nodes``, ``rounds``).
Same spec -> same bytes -> same digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from chainfl.errors import ConfigError

MODES = ("chained", "federated")
SPEC_VERSION = 2


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace, no NaN/Infinity."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except ValueError as e:
        raise ConfigError(f"task spec is not representable as canonical JSON: {e}") from e


@dataclass(frozen=True)
class TaskSpec:
    """What a training task is; recorded on chain by digest + CID."""

    mode: str                                   # "chained" (model travels node to node) or "federated"
    nodes: tuple[str, ...]                      # participant addresses; chained: visiting order
    rounds: int                                 # chained: passes over all nodes; federated: rounds
    model: dict = field(default_factory=dict)   # learning.models.ModelConfig.to_dict()
    train: dict = field(default_factory=dict)   # learning.train.TrainConfig as a dict
    feature_names: tuple[str, ...] = ()         # input columns, in order
    scaler: dict = field(default_factory=dict)  # data.scaling.Scaler.to_dict(), agreed from node stats
    strategy: dict = field(default_factory=dict)  # federated: aggregation.strategies.Strategy.spec()
    gate: dict = field(default_factory=dict)    # chained: validation-gate settings ({} = no gate)
    round_seconds: int = 600                    # federated: submission deadline after a round opens
    quorum: int = 0                             # federated: finalize early once this many updates (0 = all nodes)
    seed: int = 0                               # base seed; node i trains with seed + i + round * 1000
    node_samples: dict = field(default_factory=dict)  # node address -> training rows it committed in its
                                                #   statistics; a larger claimed sample count is flagged
    limits: dict = field(default_factory=dict)  # size caps: max_blob_bytes (model blobs), data caps
    chain_features: tuple[str, ...] = ()        # the features `detect` can compute from a chain
    turn_seconds: int = 120                     # chained: a silent node's turn is skipped after this
    fetch_patience: int = 60                    # seconds an unresolvable blob is waited for before it
                                                #   is rejected (chained) or flagged (federated)
    max_abandoned: int = 3                      # federated: abandoned rounds in a row that end the task
    stopping: dict = field(default_factory=dict)  # federated early stopping on the nodes' validation
                                                #   reports: agents.stopping.StoppingRule as a dict
                                                #   ({} = run all rounds)
    peer: dict = field(default_factory=dict)    # federated networks: peer validation of each round's
                                                #   updates (agents.peerreports.peer_spec; {} = off)
    version: int = SPEC_VERSION                 # format version of this spec

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if not self.nodes:
            raise ConfigError("a task needs at least one node")
        if len(set(a.lower() for a in self.nodes)) != len(self.nodes):
            raise ConfigError("the node list of a task contains duplicates")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if self.fetch_patience < 0 or self.turn_seconds < 1 or self.round_seconds < 1:
            raise ConfigError("turn_seconds and round_seconds must be >= 1 and fetch_patience >= 0")
        if self.mode == "chained" and self.fetch_patience >= self.turn_seconds:
            raise ConfigError(f"fetch_patience ({self.fetch_patience} s) must be shorter than turn_seconds "
                              f"({self.turn_seconds} s): a node must reject an unresolvable handoff before "
                              f"the coordinator skips its turn")
        if self.max_abandoned < 1:
            raise ConfigError(f"max_abandoned must be >= 1, got {self.max_abandoned}")
        if self.stopping:
            from chainfl.agents.stopping import StoppingRule

            if self.mode != "federated":
                raise ConfigError("early stopping (stopping) is for federated tasks; chained tasks run their passes")
            StoppingRule.from_dict(self.stopping)
        if self.peer:
            from chainfl.agents.peerreports import peer_spec

            if self.mode != "federated" or self.model.get("kind") in ("gbdt", "newton"):
                raise ConfigError("peer validation scores the updates of federated network tasks (mlp, logreg); "
                                  "a gbdt task screens its histograms by label consistency instead")
            if peer_spec(self.peer) != dict(self.peer):
                raise ConfigError(f"the spec's peer settings {self.peer} are incomplete or malformed; build them "
                                  f"with peer_spec()")
        lowered = {a.lower() for a in self.nodes}
        outside = [a for a in self.node_samples if a.lower() not in lowered]
        if outside:
            raise ConfigError(f"node_samples names accounts that are not nodes of the task: {outside}")
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in self.node_samples.values()):
            raise ConfigError("node_samples values must be positive row counts")
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        object.__setattr__(self, "chain_features", tuple(self.chain_features))

    # --- schedule ------------------------------------------------------------------------
    def next_node(self, node: str) -> str:
        """Chained mode: the node after ``node`` in the visiting order (wrapping around)."""
        lowered = [a.lower() for a in self.nodes]
        try:
            i = lowered.index(node.lower())
        except ValueError:
            raise ConfigError(f"{node} is not a participant of this task") from None
        return self.nodes[(i + 1) % len(self.nodes)]

    @property
    def total_handoffs(self) -> int:
        """Chained mode: accepted handoffs needed to finish (rounds passes over every node)."""
        return self.rounds * len(self.nodes)

    def effective_quorum(self) -> int:
        return self.quorum or len(self.nodes)

    def committed_samples(self, node: str) -> int | None:
        """The training rows ``node`` committed in its statistics (None: no commitment recorded)."""
        for address, count in self.node_samples.items():
            if address.lower() == node.lower():
                return int(count)
        return None

    @property
    def max_blob_bytes(self) -> int | None:
        """Largest model blob the task accepts (None: no cap recorded)."""
        value = self.limits.get("max_blob_bytes")
        return None if value is None else int(value)

    # --- bytes ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["nodes"] = list(self.nodes)
        d["feature_names"] = list(self.feature_names)
        d["chain_features"] = list(self.chain_features)
        return d

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    def digest(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "TaskSpec":
        try:
            d = json.loads(blob.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"task spec is not valid UTF-8 JSON: {e}") from e
        if not isinstance(d, dict):
            raise ConfigError("task spec must be a JSON object")
        if d.get("version") != SPEC_VERSION:
            raise ConfigError(f"task spec version {d.get('version')!r} is not supported "
                              f"(this chainfl reads version {SPEC_VERSION}); upgrade chainfl")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"task spec has unknown fields: {', '.join(sorted(unknown))}")
        return cls(**d)
