"""How a round of the federated gradient-boosted trees is aggregated (``gbdt`` tasks).

A gbdt node's update is not a model but its histograms for the round
(:func:`chainfl.learning.gbdt.node_update`); the global model is grown from their **exact sum**
(:func:`chainfl.learning.gbdt.coordinator_step`), so the trees equal pooled training on the same
bins whatever the partition. Averaging rules (FedAvg, Krum, medians) have no meaning here; what
a :class:`BoostingStrategy` does instead, in this order, on the updates the generic checks of
:func:`chainfl.aggregation.decision.decide_round` left (blob verified, bound to its node, task and
round, no more rows than committed, no duplicate):

1. **validity bounds** (:func:`chainfl.learning.gbdt.check_update`): integer fixed-point values,
   counts >= 0, ``|G| <= count x 2**bits``, ``0 <= H <= count x 2**bits``, the same per-slot totals
   for every feature, exactly the claimed rows at the root, nothing in closed slots. Every honest
   update meets them exactly; one that does not is flagged ``bounds`` (a boosted or fabricated
   histogram: scaling an update by 10 breaks the row totals).
2. **label-consistency screen** (optional, :class:`~chainfl.learning.gbdt.ConsistencyScreen`):
   a node whose labels disagree with the global model far beyond what calibrated labels allow
   (chi^2 per row) is flagged ``screening`` — the defence against label flippers, measured in
   ``benchmarks/results/gbdt_defence*.md``. A small node must be clearly inconsistent: its
   limit is at least ``0.5 + small_z / sqrt(rows)`` (its mean over a few rows is noisy), so an
   honest node with a handful of surprising labels is not excluded round after round.
3. the sum of what is left (float64, canonical order by digest) and the coordinator step.

Pure and deterministic: the coordinator and the auditor get the same new state, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from chainfl.errors import ConfigError, LearningError
from chainfl.learning import gbdt as G

#: the ``rule`` recorded in a gbdt task's strategy spec
RULE = "histogram-sum"


@dataclass(frozen=True)
class BoostingStrategy:
    """Aggregation of histogram rounds; see the module docstring."""

    name: str = "screened-sum"
    screen: G.ConsistencyScreen | None = G.ConsistencyScreen()
    min_updates: int = 1
    rule: str = RULE
    server_momentum: float = 0.0          # (no momentum: read by code that handles any strategy)

    def __post_init__(self):
        if self.rule != RULE:
            raise LearningError(f"a boosting strategy's rule is {RULE!r}, got {self.rule!r}")
        if isinstance(self.screen, Mapping):
            object.__setattr__(self, "screen", G.ConsistencyScreen.from_dict(self.screen))
        if self.min_updates < 1:
            raise LearningError(f"min_updates must be >= 1, got {self.min_updates}")

    def spec(self) -> dict:
        return {"name": self.name, "rule": RULE, "min_updates": self.min_updates,
                "screen": None if self.screen is None else self.screen.to_dict()}

    @classmethod
    def from_spec(cls, spec: Mapping) -> "BoostingStrategy":
        s = dict(spec)
        unknown = set(s) - {"name", "rule", "min_updates", "screen"}
        if unknown:
            raise LearningError(f"unknown boosting strategy fields {sorted(unknown)}")
        return cls(**s)

    def aggregate(self, cfg: G.GBDTConfig, state: Mapping[str, np.ndarray], nodes: Sequence[str],
                  digests: Sequence[bytes], vectors: Sequence[np.ndarray], rows: Sequence[int]):
        """``(new_state or None, included, flagged {node: "<code>: why"}, scores)``; None when
        fewer than ``min_updates`` updates are left (the round is abandoned)."""
        flagged: dict[str, str] = {}
        scores: dict[str, dict] = {}
        keep = []
        for i, (node, vec, n) in enumerate(zip(nodes, vectors, rows)):
            problems = G.check_update(cfg, state, vec, int(n))
            if problems:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                flagged[node] = f"bounds: {problems[0]}{more}"
            else:
                keep.append(i)
        if self.screen is not None and keep:
            names = [nodes[i] for i in keep]
            out, chi = G.screen_by_consistency(cfg, state, [vectors[i] for i in keep], names, self.screen)
            for node in names:
                scores[node] = {"chi2_per_row": float(chi[node])}
            position = {node: i for i, node in enumerate(nodes)}
            for node in out:
                limit = G.consistency_limit(self.screen, G.consistency(cfg, state, vectors[position[node]])[1])
                flagged[node] = (f"screening: its labels disagree with the global model (chi^2 per row "
                                 f"{chi[node]:.3f} > {limit:.3f})")
            keep = [i for i in keep if nodes[i] not in flagged]
        included = sorted(nodes[i] for i in keep)
        if len(keep) < self.min_updates:
            return None, included, flagged, scores
        total = G.sum_updates([vectors[i] for i in keep], keys=[digests[i] for i in keep])
        return G.coordinator_step(cfg, state, total), included, flagged, scores


#: name -> the strategy (``--strategy`` of a gbdt task)
BOOSTING_STRATEGIES = {
    "screened-sum": BoostingStrategy(name="screened-sum"),
    "sum": BoostingStrategy(name="sum", screen=None),
}
#: what a network strategy name means for a gbdt task (the defaults carry over)
FROM_NETWORK = {"screened-fedavg": "screened-sum", "fedavg": "sum"}


def get_boosting_strategy(name: str) -> BoostingStrategy:
    name = FROM_NETWORK.get(name, name)
    if name not in BOOSTING_STRATEGIES:
        raise ConfigError(f"strategy {name!r} averages network weights; a gbdt task sums the nodes' "
                            f"histograms: use one of {', '.join(BOOSTING_STRATEGIES)} (or --model mlp)")
    return BOOSTING_STRATEGIES[name]


def strategy_from_spec(spec: Mapping):
    """The recorded strategy of any task: a :class:`BoostingStrategy` (rule histogram-sum) or a
    network :class:`~chainfl.aggregation.strategies.Strategy`."""
    if spec.get("rule") == RULE:
        return BoostingStrategy.from_spec(spec)
    from chainfl.aggregation.strategies import Strategy

    return Strategy.from_spec(spec)
