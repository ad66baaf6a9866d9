"""Attack simulation for evaluation: which nodes are malicious and what they do.

Data poisoning (applied to a malicious node's training labels):
* ``label-flip``      y -> 1 - y

Model poisoning (applied to a malicious node's trained vector ``v`` against the model it started
from, ``reference``; ``delta = v - reference``):
* ``boosted``         boosted model replacement (Bhagoji et al. 2019, Bagdasaryan et al. 2020): the
                      node trains on its *adversarial* objective (flipped labels) and submits
                      reference + factor * delta, so its poisoned step survives averaging with the
                      honest ones - both data and model poisoning
* ``amplified``       reference + factor * delta of an *honestly* trained update: a stress test for
                      norm-based defences, not a poisoning attack (the step points the honest way;
                      a node whose honest step is ~0, e.g. one holding one class the model already
                      gets right, stays ~0 however much it is amplified)
* ``sign-flip``       reference - factor * delta
* ``gaussian-noise``  v + N(0, sigma^2) per coordinate
* ``free-rider``      reference (+ N(0, camouflage^2) to look distinct); no training needed

Protocol attacks (what a node with its own client and key can send; carried out by the node
agent, :mod:`chainfl.agents.node`, since they concern blobs and transactions, not weights):
* ``copy``            resubmit another node's update (its digest + CID) in the same round; chained:
                      hand on an older model again
* ``outsider``        a registered member that is not one of the task's nodes submits anyway
* ``inflated``        the unchanged global model, claiming 10^9 training rows (a free-rider that
                      tries to freeze FedAvg)
* ``unresolvable``    an update or handoff whose blob is never stored (its CID never resolves)

All randomness comes from explicit seeds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from chainfl.errors import LearningError

DATA_ATTACKS = ("label-flip", "boosted")                  # train on flipped labels
MODEL_ATTACKS = ("boosted", "amplified", "sign-flip", "gaussian-noise", "free-rider")  # alter the vector
PROTOCOL_ATTACKS = ("copy", "outsider", "inflated", "unresolvable")   # misuse blobs and transactions
ATTACKS = ("none", "label-flip") + MODEL_ATTACKS + PROTOCOL_ATTACKS


@dataclass(frozen=True)
class AttackConfig:
    """Who attacks and how."""

    kind: str = "none"        # one of ATTACKS
    fraction: float = 0.2     # share of nodes that are malicious (rounded to nearest count)
    factor: float = 10.0      # boost for "boosted" / "amplified" / "sign-flip"
    sigma: float = 1.0        # noise std for "gaussian-noise"
    camouflage: float = 0.0   # noise std a "free-rider" adds to the global model to look distinct
    seed: int = 0             # chooses the malicious nodes and draws the noise

    def __post_init__(self):
        if self.kind not in ATTACKS:
            raise LearningError(f"unknown attack {self.kind!r}; use one of {', '.join(ATTACKS)}")
        if not 0.0 <= self.fraction <= 1.0:
            raise LearningError(f"attack fraction must be in [0, 1], got {self.fraction}")

    @property
    def poisons_data(self) -> bool:
        return self.kind in DATA_ATTACKS

    @property
    def poisons_model(self) -> bool:
        return self.kind in MODEL_ATTACKS

    def to_dict(self) -> dict:
        return asdict(self)


def choose_malicious(n_nodes: int, fraction: float, seed: int = 0) -> list[int]:
    """Sorted indices of ``round(fraction * n_nodes)`` nodes drawn without replacement by seed."""
    if not 0.0 <= fraction <= 1.0:
        raise LearningError(f"malicious fraction must be in [0, 1], got {fraction}")
    k = int(round(fraction * n_nodes))
    rng = np.random.default_rng([int(seed), 0xA77AC])
    return sorted(int(i) for i in rng.choice(n_nodes, size=k, replace=False)) if k else []


def label_flip(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return (1 - y).astype(y.dtype)


def scale_delta(vec: np.ndarray, reference: np.ndarray, factor: float = 10.0) -> np.ndarray:
    r = np.asarray(reference, dtype=np.float64)
    return (r + factor * (np.asarray(vec, dtype=np.float64) - r)).astype(np.float32)


def sign_flip(vec: np.ndarray, reference: np.ndarray, factor: float = 10.0) -> np.ndarray:
    r = np.asarray(reference, dtype=np.float64)
    return (r - factor * (np.asarray(vec, dtype=np.float64) - r)).astype(np.float32)


def gaussian_noise(vec: np.ndarray, sigma: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(int(seed))
    v = np.asarray(vec, dtype=np.float64)
    return (v + rng.normal(0.0, sigma, v.shape)).astype(np.float32)


def free_rider(reference: np.ndarray, sigma: float = 0.0, seed: int = 0) -> np.ndarray:
    r = np.asarray(reference, dtype=np.float64)
    if sigma > 0:
        r = r + np.random.default_rng(int(seed)).normal(0.0, sigma, r.shape)
    return r.astype(np.float32)


def poison_labels(cfg: AttackConfig, y: np.ndarray) -> np.ndarray:
    """A malicious node's training labels under ``cfg`` (flipped for label-flip and boosted)."""
    return label_flip(y) if cfg.poisons_data else np.asarray(y)


def poison_update(cfg: AttackConfig, vec: np.ndarray, reference: np.ndarray, seed: int = 0) -> np.ndarray:
    """A malicious node's submitted vector under ``cfg`` (unchanged for label-flip).

    ``seed`` varies the noise per node and round (combine it with ``cfg.seed``)."""
    s = int(cfg.seed) * 1_000_003 + int(seed)
    if cfg.kind in ("boosted", "amplified"):
        return scale_delta(vec, reference, cfg.factor)
    if cfg.kind == "sign-flip":
        return sign_flip(vec, reference, cfg.factor)
    if cfg.kind == "gaussian-noise":
        return gaussian_noise(vec, cfg.sigma, s)
    if cfg.kind == "free-rider":
        return free_rider(reference, cfg.camouflage, s)
    return np.asarray(vec, dtype=np.float32)
