"""Detector models and their weights as plain numpy ("states").

A *state* is an ordered mapping ``name -> np.ndarray(float32)`` in the model's own parameter
order; :func:`flatten` turns it into one 1-D float32 vector (that order, row-major) and
:func:`unflatten` turns it back. Aggregation works on the vectors, storage on the states.
Models output one logit per row; the positive class is "fraud/illicit".

Kinds: ``mlp`` and ``logreg`` are torch networks on scaled inputs (the task's agreed
:class:`~chainfl.data.scaling.Scaler`); ``gbdt`` is the histogram-based federated gradient-boosted
trees of :mod:`chainfl.learning.gbdt` on the raw features (its bins are agreed in its first
round), whose state holds float32 *and* int32 arrays; ``newton`` is the chained Newton logistic
regression on piecewise-linear encodings of :mod:`chainfl.learning.newton` (raw features, its
encoder in the config, a float64/int64 state) — :func:`expected_layout` gives every
kind's names, shapes and dtypes, :func:`model_inputs` what each kind reads, and
:func:`predict_scores` in :mod:`chainfl.learning.evaluate` scores any kind.
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

KINDS = ("mlp", "logreg", "gbdt", "newton")
#: kinds that are torch networks trained by SGD (the rest have their own protocol)
NETWORK_KINDS = ("mlp", "logreg")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a detector. Travels with the model so anyone can rebuild it."""

    kind: str = "mlp"                    # "mlp" (hidden ReLU layers), "logreg" (one linear layer), "gbdt"
    hidden: tuple[int, ...] = (64, 32)   # widths of the hidden layers (ignored for "logreg"/"gbdt")
    dropout: float = 0.0                 # dropout after each hidden layer while training
    gbdt: dict | None = None             # kind "gbdt": chainfl.learning.gbdt.GBDTConfig.to_dict()
    newton: dict | None = None           # kind "newton": chainfl.learning.newton.NewtonConfig.to_dict()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise LearningError(f"unknown model kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.kind == "gbdt":
            from chainfl.learning.gbdt import GBDTConfig

            if not self.gbdt:
                raise LearningError("a gbdt model needs its boosting settings (ModelConfig(kind='gbdt', "
                                    "gbdt=GBDTConfig(...).to_dict()))")
            object.__setattr__(self, "gbdt", GBDTConfig.from_dict(self.gbdt).to_dict())   # validated, canonical
        elif self.gbdt is not None:
            raise LearningError(f"boosting settings given for a {self.kind!r} model; use kind 'gbdt'")
        if self.kind == "newton":
            from chainfl.learning.newton import NewtonConfig

            if not self.newton:
                raise LearningError("a newton model needs its encoder settings (ModelConfig(kind='newton', "
                                    "newton=NewtonConfig(...).to_dict()))")
            object.__setattr__(self, "newton", NewtonConfig.from_dict(self.newton).to_dict())
        elif self.newton is not None:
            raise LearningError(f"newton settings given for a {self.kind!r} model; use kind 'newton'")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if any(h <= 0 for h in self.hidden):
            raise LearningError(f"hidden widths must be positive, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise LearningError(f"dropout must be in [0, 1), got {self.dropout}")

    def __hash__(self):
        return hash((self.kind, self.hidden, self.dropout, repr(self.gbdt), repr(self.newton)))

    @property
    def is_network(self) -> bool:
        return self.kind in NETWORK_KINDS

    def boosting(self, n_features: int | None = None):
        """The :class:`~chainfl.learning.gbdt.GBDTConfig` of a gbdt model (checked against
        ``n_features`` when given)."""
        from chainfl.learning.gbdt import GBDTConfig

        if self.kind != "gbdt":
            raise LearningError(f"a {self.kind!r} model has no boosting settings")
        cfg = GBDTConfig.from_dict(self.gbdt)
        if n_features is not None and cfg.n_features != int(n_features):
            raise LearningError(f"the gbdt model reads {cfg.n_features} features, the data has {n_features}")
        return cfg

    def newton_settings(self, n_features: int | None = None):
        """The :class:`~chainfl.learning.newton.NewtonConfig` of a newton model (checked against
        ``n_features`` when given)."""
        if self.kind != "newton":
            raise LearningError(f"a {self.kind!r} model has no newton settings")
        cfg = _newton_config(self)
        if n_features is not None and cfg.n_features != int(n_features):
            raise LearningError(f"the newton model reads {cfg.n_features} features, the data has {n_features}")
        return cfg

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "hidden": list(self.hidden), "dropout": self.dropout}
        if self.gbdt is not None:
            d["gbdt"] = dict(self.gbdt)
        if self.newton is not None:
            d["newton"] = dict(self.newton)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelConfig":
        return cls(kind=d.get("kind", "mlp"), hidden=tuple(d.get("hidden", (64, 32))),
                   dropout=float(d.get("dropout", 0.0)), gbdt=d.get("gbdt"), newton=d.get("newton"))


def _newton_config(cfg: ModelConfig):
    """The parsed NewtonConfig of ``cfg``, kept on the (frozen) config after the first call."""
    parsed = cfg.__dict__.get("_newton_cfg")
    if parsed is None:
        from chainfl.learning.newton import NewtonConfig

        parsed = NewtonConfig.from_dict(cfg.newton)
        object.__setattr__(cfg, "_newton_cfg", parsed)
    return parsed


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


def expected_layout(cfg: ModelConfig, n_features: int) -> "OrderedDict[str, tuple[tuple[int, ...], np.dtype]]":
    """Names -> (shape, dtype) of a model's state, in its parameter order."""
    if cfg.kind == "gbdt":
        from chainfl.learning import gbdt

        return OrderedDict(gbdt.state_shapes(cfg.boosting(n_features)))
    if cfg.kind == "newton":
        from chainfl.learning import newton

        return OrderedDict(newton.state_shapes(cfg.newton_settings(n_features)))
    return OrderedDict((k, (s, np.dtype(np.float32)))
                       for k, s in state_shapes(get_state(build_model(cfg, n_features, 0))).items())


def expected_shapes(cfg: ModelConfig, n_features: int) -> "OrderedDict[str, tuple[int, ...]]":
    """Names and shapes of a model's state without building weights worth keeping."""
    return OrderedDict((k, s) for k, (s, _) in expected_layout(cfg, n_features).items())


def initial_model_state(cfg: ModelConfig, n_features: int, seed: int = 0) -> "OrderedDict[str, np.ndarray]":
    """The untrained state of any kind (networks: seeded initialisation; gbdt: before its bins round)."""
    if cfg.kind == "gbdt":
        from chainfl.learning import gbdt

        init = gbdt.init_state(cfg.boosting(n_features))
        return OrderedDict((k, init[k]) for k in expected_layout(cfg, n_features))
    if cfg.kind == "newton":
        from chainfl.learning import newton

        init = newton.init_state(cfg.newton_settings(n_features))
        return OrderedDict((k, init[k]) for k in expected_layout(cfg, n_features))
    return get_state(build_model(cfg, n_features, seed))


def model_inputs(cfg: ModelConfig, scaler, X) -> np.ndarray:
    """What a model of ``cfg`` reads from raw feature rows ``X``: networks the task's scaled
    inputs (``scaler.transform``), gbdt and newton the raw values (their bins are quantiles of them)."""
    if cfg.kind in ("gbdt", "newton"):
        return np.asarray(X, dtype=np.float32)
    return scaler.transform(X)


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
