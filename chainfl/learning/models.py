"""Detector models and their weights as plain numpy ("states").

A *state* is an ordered mapping ``name -> np.ndarray(float32)`` in the model's own parameter
order; :func:`flatten` turns it into one 1-D float32 vector (that order, row-major) and
:func:`unflatten` turns it back. Aggregation works on the vectors, storage on the states.
Models output one logit per row; the positive class is "fraud/illicit".
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
import torch
from torch import nn

from chainfl.errors import LearningError

State = "OrderedDict[str, np.ndarray]"

KINDS = ("mlp", "logreg")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a detector. Travels with the model so anyone can rebuild it."""

    kind: str = "mlp"                    # "mlp" (hidden ReLU layers) or "logreg" (one linear layer)
    hidden: tuple[int, ...] = (64, 32)   # widths of the hidden layers (ignored for "logreg")
    dropout: float = 0.0                 # dropout after each hidden layer while training

    def __post_init__(self):
        if self.kind not in KINDS:
            raise LearningError(f"unknown model kind {self.kind!r}; use one of {', '.join(KINDS)}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if any(h <= 0 for h in self.hidden):
            raise LearningError(f"hidden widths must be positive, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise LearningError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelConfig":
        return cls(kind=d.get("kind", "mlp"), hidden=tuple(d.get("hidden", (64, 32))),
                   dropout=float(d.get("dropout", 0.0)))


class Detector(nn.Module):
    """x [n, d] -> logits [n]."""

    def __init__(self, cfg: ModelConfig, n_features: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        if cfg.kind == "mlp":
            for h in cfg.hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                if cfg.dropout > 0:
                    layers.append(nn.Dropout(cfg.dropout))
                width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def build_model(cfg: ModelConfig, n_features: int, seed: int = 0) -> Detector:
    """A freshly initialised detector; the same (cfg, n_features, seed) gives the same weights.

    The global torch RNG is left as it was (initialisation runs under ``fork_rng``).
    """
    if n_features <= 0:
        raise LearningError(f"n_features must be positive, got {n_features}")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))   # CPU only: no lazy CUDA seeding
        model = Detector(cfg, int(n_features))
    return model


def get_state(model: nn.Module) -> "OrderedDict[str, np.ndarray]":
    """Copy of the model's weights as ``name -> float32 array`` in parameter order."""
    return OrderedDict((k, v.detach().cpu().numpy().astype(np.float32, copy=True))
                       for k, v in model.state_dict().items())


def set_state(model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Load a state into the model; names and shapes must match exactly."""
    own = model.state_dict()
    if list(own) != list(state):
        raise LearningError(f"state names {list(state)} do not match the model's {list(own)}; "
                            "was it made with a different ModelConfig or feature count?")
    for k, v in state.items():
        if tuple(np.shape(v)) != tuple(own[k].shape):
            raise LearningError(f"weight {k!r} has shape {tuple(np.shape(v))}, the model expects "
                                f"{tuple(own[k].shape)}; check ModelConfig and the feature count")
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                           for k, v in state.items()})


def state_shapes(state: Mapping[str, np.ndarray]) -> "OrderedDict[str, tuple[int, ...]]":
    return OrderedDict((k, tuple(np.shape(v))) for k, v in state.items())


def expected_shapes(cfg: ModelConfig, n_features: int) -> "OrderedDict[str, tuple[int, ...]]":
    """Names and shapes of a model's state without building weights worth keeping."""
    return state_shapes(get_state(build_model(cfg, n_features, 0)))


def flatten(state: Mapping[str, np.ndarray]) -> np.ndarray:
    """All weights as one 1-D float32 vector, in the state's name order."""
    if not state:
        raise LearningError("cannot flatten an empty state")
    return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in state.values()])


def unflatten(vec: np.ndarray, like) -> "OrderedDict[str, np.ndarray]":
    """Inverse of :func:`flatten`; ``like`` is a state or a mapping ``name -> shape``."""
    vec = np.asarray(vec)
    if vec.ndim != 1:
        raise LearningError(f"expected a 1-D vector, got shape {vec.shape}")
    shapes = [(k, tuple(v) if isinstance(v, (tuple, list)) else tuple(np.shape(v)))
              for k, v in like.items()]
    total = sum(int(np.prod(s)) for _, s in shapes)
    if total != vec.size:
        raise LearningError(f"vector has {vec.size} values, the model has {total}; "
                            "it belongs to a different architecture")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    pos = 0
    for k, s in shapes:
        n = int(np.prod(s))
        out[k] = vec[pos:pos + n].astype(np.float32).reshape(s)
        pos += n
    return out
