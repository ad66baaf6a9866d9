"""Strategies: the aggregation *policy* around the pure rules.

A :class:`Strategy` says how many updates a round needs, how updates are weighted, whether they
are screened (flagged updates are excluded and reported per node) and clipped, which rule reduces
them, a server step size and server momentum. It is fully described by :meth:`Strategy.spec` (JSON-able), so an
auditor can rebuild it with :meth:`Strategy.from_spec` and recompute every aggregate bit for bit.

    result = STRATEGIES["screened-fedavg"]().aggregate(updates, reference=global_vec)
    result.vector, result.included, result.flagged, result.scores
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from chainfl.aggregation import rules as R
from chainfl.aggregation.screening import ScreenConfig, screen
from chainfl.errors import LearningError

WEIGHTINGS = ("samples", "uniform")
KRUM_MIN_UPDATES = 3   # krum / multi-krum with fewer updates (after screening) average them all


@dataclass(frozen=True)
class Update:
    """One node's submission for a round."""

    node: str                         # who sent it (an address in the agents, any label here)
    digest: bytes | str | None        # canonical sort key (the blob's sha256); None = vector bytes
    state_vec: np.ndarray             # flat float32 model vector (learning.models.flatten)
    n_samples: int                    # claimed training rows (the FedAvg weight)


@dataclass
class AggregateResult:
    vector: np.ndarray                       # the new global model, flat float32
    included: list[str]                      # nodes whose update entered the rule, sorted
    flagged: list[str]                       # nodes excluded by screening (suspicious), sorted
    scores: dict[str, dict] = field(default_factory=dict)   # node -> screening scores / reasons
    excluded: list[str] = field(default_factory=list)       # not selected by the rule (e.g. Krum), no blame


@dataclass(frozen=True)
class Strategy:
    """Aggregation policy; see the module docstring."""

    name: str                                 # label shown in results / on the task config
    rule: str = "fedavg"                      # key of aggregation.rules.RULES
    params: tuple = ()                        # rule parameters as sorted (key, value) pairs
    min_updates: int = 1                      # fewer (after screening) -> LearningError
    weighting: str = "samples"                # "samples" (FedAvg) or "uniform"
    screening: ScreenConfig | None = None     # None = no screening
    clip_factor: float = 0.0                  # >0: clip each delta to clip_factor x median norm
    server_lr: float = 1.0                    # new = reference + server_lr * (rule(...) - reference)
    server_momentum: float = 0.0              #       + server_momentum * (reference - previous)

    def __post_init__(self):
        if self.rule not in R.RULES:
            raise LearningError(f"unknown rule {self.rule!r}; known: {', '.join(sorted(R.RULES))}")
        if self.weighting not in WEIGHTINGS:
            raise LearningError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if isinstance(self.params, dict):
            object.__setattr__(self, "params", tuple(sorted(self.params.items())))

    # ---- description ---------------------------------------------------------------------
    def spec(self) -> dict:
        return {"name": self.name, "rule": self.rule, "params": dict(self.params),
                "min_updates": self.min_updates, "weighting": self.weighting,
                "screening": None if self.screening is None else self.screening.to_dict(),
                "clip_factor": self.clip_factor, "server_lr": self.server_lr,
                "server_momentum": self.server_momentum}

    @classmethod
    def from_spec(cls, spec: dict) -> "Strategy":
        s = dict(spec)
        scr = s.pop("screening", None)
        return cls(name=s.pop("name"), rule=s.pop("rule"), params=dict(s.pop("params", {})),
                   screening=None if scr is None else ScreenConfig(**scr), **s)

    # ---- the policy ----------------------------------------------------------------------
    def _rule_params(self, n: int) -> dict:
        p = dict(self.params)
        if self.rule in ("krum", "multi-krum") and "f" not in p:
            frac = float(p.pop("f_frac", 0.2))
            p["f"] = max(0, min(int(np.floor(frac * n)), n - 3))
        p.pop("f_frac", None)
        if self.rule == "multi-krum" and p.get("m") is None and "m_frac" in p:
            p["m"] = max(1, int(np.floor(float(p.pop("m_frac")) * n)))
        p.pop("m_frac", None)
        return p

    def aggregate(self, updates: Sequence[Update], reference: np.ndarray | None = None,
                  previous: np.ndarray | None = None) -> AggregateResult:
        """Screen, clip, weight and reduce ``updates``; ``reference`` is the round's global model.

        ``previous`` is the global model of the round before (None in the first round): with
        ``server_momentum`` > 0 the step is heavy-ball, which equals FedAvgM's server momentum
        (``v = m v + delta; w += lr v``) but needs no hidden state: both models are on chain.
        """
        if len(updates) == 0:
            raise LearningError(f"strategy {self.name!r}: no updates this round")
        nodes = [u.node for u in updates]
        if len(set(nodes)) != len(nodes):
            raise LearningError(f"strategy {self.name!r}: a node submitted twice in one round")
        if (self.clip_factor > 0 or self.server_lr != 1.0 or self.server_momentum) and reference is None:
            raise LearningError(f"strategy {self.name!r} clips or scales against the global "
                                "model: pass reference=")
        vecs = [np.asarray(u.state_vec, dtype=np.float32) for u in updates]
        keys = None if any(u.digest is None for u in updates) else [u.digest for u in updates]

        # 1. screening
        flagged_mask = [False] * len(updates)
        scores: dict[str, dict] = {}
        if self.screening is not None:
            res = screen(vecs, reference, self.screening, keys, [u.n_samples for u in updates])
            flagged_mask = res.flagged
            scores = {n: s for n, s in zip(nodes, res.scores)}
        keep = [i for i, f in enumerate(flagged_mask) if not f]
        if len(keep) < self.min_updates:
            raise LearningError(f"strategy {self.name!r} needs {self.min_updates} updates, "
                                f"{len(keep)} left after screening; wait for more nodes or lower min_updates")
        kv = [vecs[i] for i in keep]
        kk = None if keys is None else [keys[i] for i in keep]
        kw = [float(updates[i].n_samples) if self.weighting == "samples" else 1.0 for i in keep]

        # 2. optional norm clipping of each delta to clip_factor x the median delta norm
        if self.clip_factor > 0:
            ref = np.asarray(reference, dtype=np.float64)
            norms = sorted(float(np.linalg.norm(v.astype(np.float64) - ref)) for v in kv)
            bound = self.clip_factor * float(np.median(norms))
            if bound > 0:
                kv = [R.clip_norm(v, reference, bound) for v in kv]

        # 3. the rule; which updates it actually used
        p = self._rule_params(len(kv))
        if self.rule in ("krum", "multi-krum") and len(kv) < KRUM_MIN_UPDATES:
            # Krum cannot rank fewer than 3 updates (each needs >= 1 neighbour besides itself and
            # the f excluded): nothing to select among, so the round is their (weighted) mean
            used = keep
            vec = R.fedavg(kv, kw, kk)
        elif self.rule in ("krum", "multi-krum"):
            m = 1 if self.rule == "krum" else p.get("m")
            sel = R.multi_krum_select(kv, p["f"], m, kk, kw)
            used = [keep[i] for i in sel]
            vec = R.RULES[self.rule](kv, kw, kk, **p)
        else:
            used = keep
            vec = R.RULES[self.rule](kv, kw, kk, **p)

        # 4. server step (+ heavy-ball momentum from the previous global model)
        if self.server_lr != 1.0 or (self.server_momentum and previous is not None):
            ref = np.asarray(reference, dtype=np.float64)
            new = ref + self.server_lr * (vec.astype(np.float64) - ref)
            if self.server_momentum and previous is not None:
                prev = np.asarray(previous, dtype=np.float64)
                if prev.shape != ref.shape:
                    raise LearningError(f"previous global model has {prev.size} values, expected {ref.size}")
                new = new + self.server_momentum * (ref - prev)
            vec = new.astype(np.float32)

        return AggregateResult(vector=vec, included=sorted(nodes[i] for i in used),
                               flagged=sorted(nodes[i] for i, f in enumerate(flagged_mask) if f),
                               scores=scores, excluded=sorted(nodes[i] for i in set(keep) - set(used)))


def _factory(name: str, **defaults) -> Callable[..., Strategy]:
    def make(**overrides) -> Strategy:
        kw = {**defaults, **overrides}
        params = {**dict(defaults.get("params", {})), **dict(overrides.get("params", {}))}
        kw["params"] = params
        return Strategy(name=name, **kw)
    make.__doc__ = f"Strategy {name!r} (defaults {defaults}); keyword overrides allowed."
    return make


#: screening of the "screened-*" strategies: isolation from the nearest other updates (robust to
#: the clusters label skew makes), at most 20 % of a round's updates flagged: the assumed bound on
#: malicious nodes. The cap is a trade-off, measured on the real data (3 seeds, 30 rounds; the 0.4
#: runs are the results files of commits ae5d62c and d10f07a):
#: with 30 % boosters a 0.2 cap lets a third of them through (F1 -5 points), a 0.4 cap catches
#: 98.7 %; but under strong label skew (Dirichlet 0.1) honest nodes holding mostly one class are
#: isolated too, and a 0.4 cap flagged 35 % of honest updates in clean runs and cost 13 F1 points
#: (0.881 -> 0.750) where 0.2 costs none. Raise it with ``get_strategy("screened-fedavg",
#: screening=replace(NEIGHBOUR_SCREEN, max_flag_frac=0.4))`` (pass that to ``build_spec(strategy=...)``
#: for a task on chain) when more attackers than label skew are expected.
NEIGHBOUR_SCREEN = ScreenConfig(method="neighbours", k_neighbours=2, max_ratio=3.0,
                                norm_ratio_max=10.0, max_flag_frac=0.2)

#: name -> factory(**overrides) -> Strategy
STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": _factory("fedavg", rule="fedavg"),
    "median": _factory("median", rule="median"),
    "trimmed-mean": _factory("trimmed-mean", rule="trimmed-mean", params={"beta": 0.2}),
    "krum": _factory("krum", rule="krum", params={"f_frac": 0.2}),
    "multi-krum": _factory("multi-krum", rule="multi-krum", params={"f_frac": 0.2}),
    "screened-fedavg": _factory("screened-fedavg", rule="fedavg", screening=NEIGHBOUR_SCREEN),
    "clipped-fedavg": _factory("clipped-fedavg", rule="fedavg", clip_factor=2.0),
    "screened-multi-krum": _factory("screened-multi-krum", rule="multi-krum",
                                    params={"f_frac": 0.2}, screening=NEIGHBOUR_SCREEN),
}


def get_strategy(name: str, **overrides) -> Strategy:
    if name not in STRATEGIES:
        raise LearningError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name](**overrides)
