"""Early stopping of a federated task on the nodes' signed validation reports.

Every node already reports, for each new global model, the per-class histogram of its scores on
its own validation rows (:mod:`chainfl.agents.threshold`, :mod:`chainfl.agents.reports`). The
coordinator stops a task early when those reports say the model has stopped improving:

* **one number per node and model** — :func:`node_loss`: the node's class-balanced log-loss read
  from its histogram (each bin at its centre logit; bins are 0.1 logit wide, so the reading is
  within ~0.05 of the exact loss per row). Class-balanced, so a node holding few frauds counts
  its frauds as much as its normal accounts.
* **one robust number per model** — :func:`robust_loss`: the median over the reporting nodes. A
  lying minority (reports of perfect or awful models) moves a median only as far as the honest
  reporters' quantiles reach, as long as the liars are fewer than half of *the reporters on that
  model*; a model counts only when at least ``min_reporters`` (a share m) of the task's n nodes
  reported on it, so the guarantee holds for fewer than ``m x n / 2`` liars whatever the honest
  nodes do (a quarter of the nodes at the default m = 0.5), and for any minority while every
  honest node reports. Malformed histograms (not the shared binning, non-integer or negative
  counts) never count. The coordinator never waits for reports (a silent node delays the stop,
  never the task).
* **the rule** — :func:`decide`: over the ``2 x patience`` most recent finalized models that each
  have enough reports, stop when the mean robust loss of the last ``patience`` is not lower than
  ``(1 - min_delta) x`` the mean of the ``patience`` before them, and at least ``min_rounds``
  rounds are finalized. Window means, not window minima: per-node validation slices are small,
  so one lucky round would otherwise end a task that still improves on average (measured:
  benchmarks/results/early_stopping.md). Windowed, so the evidence an auditor needs (the reports of ``2 x
  patience`` models) stays bounded whatever the number of rounds.

The reports the decision used travel in the task's evidence blob (next to the release-threshold
reports) and the reason is recorded at ``closeTask``; the audit re-verifies every signature and
re-decides (:func:`check_evidence`). Pure functions: the coordinator and an auditor get the same
floats.

Lag: nodes report on a global model when they see it, i.e. while the next round runs, so the
rule reads the models up to the one before the newest (never the newest: liars can report on it
at once, before any honest node has fetched and scored it); a task stops one round after its
reports say so. The audit checks that the window ends before the last finalized round.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from chainfl.agents.threshold import LOGIT_RANGE, N_BINS
from chainfl.errors import ConfigError

#: The centre logit of each of the ``N_BINS + 2`` histogram bins (the open end bins at +-range + half a bin).
_WIDTH = 2 * LOGIT_RANGE / N_BINS
CENTRES = np.concatenate([[-LOGIT_RANGE - _WIDTH / 2],
                          -LOGIT_RANGE + (np.arange(N_BINS) + 0.5) * _WIDTH,
                          [LOGIT_RANGE + _WIDTH / 2]])
#: Log-loss of a positive / negative row scored in each bin, rounded to multiples of 2**-32 so that
#: a one-ulp difference between two machines' ``logaddexp`` cannot reach the sums: with integer
#: counts, every loss below is then the same float on the coordinator and on any auditor.
_POS_LOSS = np.round(np.logaddexp(0.0, -CENTRES) * 2.0**32) / 2.0**32
_NEG_LOSS = np.round(np.logaddexp(0.0, CENTRES) * 2.0**32) / 2.0**32

STOP_PREFIX = "stopped early on the nodes' validation reports"


@dataclass(frozen=True)
class StoppingRule:
    patience: int = 5            # finalized models without improvement that end the task
    min_delta: float = 0.005     # relative improvement of the robust loss that counts
    min_rounds: int = 10         # never stop before this many finalized rounds
    min_reporters: float = 0.5   # a model counts when at least this share of the task's nodes reported on it

    def __post_init__(self):
        def integer(name, low):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"stopping {name} must be an integer >= {low}, got {v!r}")

        def number(name, ok, what):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(float(v)):
                raise ConfigError(f"stopping {name} must be a number in {what}, got {v!r}")

        integer("patience", 1)
        integer("min_rounds", 1)
        number("min_delta", lambda x: 0.0 <= x < 1.0, "[0, 1)")
        number("min_reporters", lambda x: 0.0 < x <= 1.0, "(0, 1]")

    @property
    def window(self) -> int:
        return 2 * self.patience

    def needed(self, n_nodes: int) -> int:
        """Reports a model needs to count."""
        return max(1, math.ceil(round(self.min_reporters * n_nodes, 9)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "StoppingRule":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown stopping setting(s) {sorted(unknown)}; known: "
                              f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**dict(d))


def node_loss(hist: Mapping) -> float | None:
    """Class-balanced log-loss of one node's score histogram (None: malformed or empty)."""
    from chainfl.agents.threshold import valid_histogram

    if not valid_histogram(hist):
        return None
    parts = []
    for counts, table in ((hist["pos"], _POS_LOSS), (hist["neg"], _NEG_LOSS)):
        n = sum(counts)
        if n > 0:
            parts.append(math.fsum(c * float(x) for c, x in zip(counts, table) if c) / n)
    return math.fsum(parts) / len(parts) if parts else None


def robust_loss(hists: Sequence[Mapping]) -> tuple[float | None, int]:
    """(median of the nodes' losses, how many nodes it is over); malformed histograms do not count."""
    losses = sorted(x for x in (node_loss(h) for h in hists) if x is not None and math.isfinite(x))
    if not losses:
        return None, 0
    mid = len(losses) // 2
    median = losses[mid] if len(losses) % 2 else (losses[mid - 1] + losses[mid]) / 2
    return float(median), len(losses)


@dataclass(frozen=True)
class StopDecision:
    rounds: tuple[int, ...]           # the finalized rounds whose models the decision used
    losses: tuple[float, ...]         # their robust losses
    reporters: tuple[int, ...]        # how many node losses each is the median of
    stop: bool
    reason: str

    def to_dict(self) -> dict:
        return {"rounds": list(self.rounds), "losses": list(self.losses), "reporters": list(self.reporters),
                "stop": self.stop, "reason": self.reason}


def decide(rule: StoppingRule, points: Sequence[tuple[int, float | None, int]], n_nodes: int,
           finalized: int) -> StopDecision:
    """``points``: ``(round, robust loss, reporters)`` of consecutive finalized models in round
    order (loss None: no report; abandoned rounds have no model and are simply absent). The
    window is the ``2 x patience`` points ending at the last one with enough reporters; every
    point in it must have enough reporters, else no stop. ``finalized``: rounds finalized so far."""
    need = rule.needed(n_nodes)
    ok = [i for i, p in enumerate(points) if p[1] is not None and p[2] >= need]
    if not ok:
        return StopDecision((), (), (), False, "no finalized model has enough reports yet")
    window = list(points[max(0, ok[-1] - rule.window + 1): ok[-1] + 1])
    rounds = tuple(int(p[0]) for p in window)
    losses = tuple(float(p[1]) if p[1] is not None else math.nan for p in window)
    reporters = tuple(int(p[2]) for p in window)
    if finalized < rule.min_rounds:
        return StopDecision(rounds, losses, reporters, False, f"{finalized} < {rule.min_rounds} rounds finalized")
    if len(window) < rule.window or any(n < need for n in reporters):
        return StopDecision(rounds, losses, reporters, False,
                            f"not each of the last {rule.window} models has {need} report(s)")
    before, recent = math.fsum(losses[:rule.patience]) / rule.patience, math.fsum(losses[rule.patience:]) / rule.patience
    stop = recent >= (1.0 - rule.min_delta) * before
    reason = (f"{STOP_PREFIX}: mean robust validation loss {recent:.4f} over rounds {rounds[rule.patience]}-"
              f"{rounds[-1]} did not improve on {before:.4f} over rounds {rounds[0]}-{rounds[rule.patience - 1]} by "
              f"{rule.min_delta:.1%} (medians of >= {min(reporters)} node reports)")
    return StopDecision(rounds, losses, reporters, stop, reason if stop else "still improving")


def points_from_reports(rounds_models: Sequence[tuple[int, str]], reports, task_id: int, nodes):
    """``(round, robust loss, reporters)`` per ``(round, 0x model digest)`` from signed reports
    (only verified reports of task nodes count, one per node and model)."""
    from chainfl.agents.reports import verified_reports

    reports = list(reports)
    out = []
    for r, model in rounds_models:
        used = verified_reports(reports, task_id, nodes, model)
        loss, n = robust_loss([u.histograms[model] for u in used])
        out.append((int(r), loss, n))
    return out


def check_evidence(section: Mapping, reports, *, rule: StoppingRule, task_id: int, nodes,
                   finalized_models: Mapping[int, str]) -> tuple[StopDecision | None, str | None]:
    """Re-decide a recorded stop: ``(decision, problem)``; problem None when the evidence holds
    and says stop. ``finalized_models``: round -> ``0x`` digest of every finalized round."""
    try:
        rounds = [int(r) for r in section["rounds"]]
        models = [str(m) for m in section["models"]]
    except (KeyError, TypeError, ValueError) as e:
        return None, f"the stopping evidence is malformed ({e!r})"
    if len(rounds) != len(models):
        return None, "the stopping evidence lists a different number of rounds and models"
    order = sorted(finalized_models)
    if not rounds or rounds[0] not in finalized_models \
            or order[order.index(rounds[0]): order.index(rounds[0]) + len(rounds)] != rounds:
        return None, f"the stopping evidence's rounds {rounds} are not consecutive finalized rounds"
    for r, m in zip(rounds, models):
        if finalized_models.get(r) != m:
            return None, f"the stopping evidence names model {m[:12]}… for round {r}, which is not that round's aggregate"
    if rounds[-1] >= order[-1]:
        return None, (f"the stopping evidence reads round {rounds[-1]}'s model, the newest finalized one, "
                      f"which the rule must not read (its reports are not all in)")
    points = points_from_reports(list(zip(rounds, models)), reports, task_id, nodes)
    decision = decide(rule, points, len(nodes), len(finalized_models))
    if not decision.stop:
        return decision, f"the stopping evidence does not justify the stop ({decision.reason})"
    return decision, None
