"""Local training: (model config, starting weights, local data, settings) -> new weights.

Pure: no files, no network. The same inputs and ``TrainConfig.seed`` give the same output bytes
on the same machine (shuffling and dropout draw from generators seeded here; the global torch RNG
is left untouched). Class imbalance is handled with a positive-class weight in the loss; FedProx
adds ``prox_mu / 2 * ||w - w_start||^2`` to keep local models near the global one on non-IID data.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np
import torch
from torch import nn

from chainfl.errors import LearningError
from chainfl.learning.models import ModelConfig, build_model, get_state, set_state

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """How one node trains on its local data for one visit/round."""

    epochs: int = 1                       # passes over the local data
    batch_size: int = 64                  # rows per optimiser step
    lr: float = 1e-2                      # learning rate
    optimizer: str = "adam"               # "adam" or "sgd" (fresh optimiser state every call)
    pos_weight: float | str = "auto"      # positive-class loss weight; "auto" = local neg/pos ratio
    prox_mu: float = 0.0                  # FedProx proximal coefficient (0 = plain local training)
    seed: int = 0                         # shuffling / dropout / fresh-init seed
    weight_decay: float = 0.0             # L2 penalty passed to the optimiser
    momentum: float = 0.0                 # SGD momentum (ignored by Adam)
    max_pos_weight: float = 50.0          # cap for "auto" (a node with 1 positive in 500 rows)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise LearningError(f"unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}")
        if self.epochs < 1 or self.batch_size < 1:
            raise LearningError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (self.lr > 0):
            raise LearningError(f"lr must be positive, got {self.lr}")
        if isinstance(self.pos_weight, str) and self.pos_weight != "auto":
            raise LearningError(f"pos_weight must be 'auto' or a number, got {self.pos_weight!r}")
        if self.prox_mu < 0:
            raise LearningError(f"prox_mu must be >= 0, got {self.prox_mu}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainConfig":
        return cls(**dict(d))


@dataclass
class LocalResult:
    state: "OrderedDict[str, np.ndarray]"   # trained weights
    n_samples: int                          # rows trained on (the FedAvg weight)
    loss: float                             # mean training loss of the last epoch (no prox term)
    metrics: dict = field(default_factory=dict)


def resolve_pos_weight(y: np.ndarray, setting: float | str, cap: float = 50.0) -> float:
    """The positive-class weight: a number as given, or neg/pos of ``y`` clipped to [1, cap]."""
    if setting != "auto":
        return float(setting)
    pos = int(np.sum(y == 1))
    neg = int(y.size - pos)
    if pos == 0:
        return 1.0
    return float(min(max(neg / pos, 1.0), cap))


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise LearningError(f"X must be [n, d] and y [n]; got X {X.shape}, y {y.shape}")
    if X.shape[0] == 0:
        raise LearningError("no training rows: this node has no data")
    if not np.all(np.isfinite(X)):
        raise LearningError("X contains NaN or inf; fill missing values (e.g. NaN -> 0) and scale first")
    return X, y.astype(np.float32)


def train_local(model_cfg: ModelConfig, state: Mapping[str, np.ndarray] | None, X: np.ndarray,
                y: np.ndarray, cfg: TrainConfig = TrainConfig()) -> LocalResult:
    """Train from ``state`` (or a fresh model seeded by ``cfg.seed`` when None) on (X, y)."""
    X, y = _check_xy(X, y)
    n, d = X.shape

    # 1. model at the starting weights; a frozen copy of them for the proximal term
    model = build_model(model_cfg, d, cfg.seed)
    if state is not None:
        set_state(model, state)
    start = [p.detach().clone() for p in model.parameters()]

    # 2. loss with the positive-class weight, optimiser
    pw = resolve_pos_weight(y, cfg.pos_weight, cfg.max_pos_weight)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pw, dtype=torch.float32))
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)

    Xt = torch.from_numpy(X)     # [n, d]
    yt = torch.from_numpy(y)     # [n]
    gen = torch.Generator().manual_seed(int(cfg.seed))

    # 3. epochs of shuffled mini-batches; dropout draws from a forked, seeded global RNG
    model.train()
    last_epoch_loss = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(cfg.seed) + 1)
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for i in range(0, n, cfg.batch_size):
                idx = order[i:i + cfg.batch_size]
                logits = model(Xt[idx])                        # [b]
                loss = loss_fn(logits, yt[idx])
                total += float(loss.detach()) * idx.numel()
                if cfg.prox_mu > 0:
                    prox = sum(((p - s) ** 2).sum() for p, s in zip(model.parameters(), start))
                    loss = loss + 0.5 * cfg.prox_mu * prox
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            last_epoch_loss = total / n

    # 4. weights out as float32 numpy
    model.eval()
    metrics = {"pos_weight": pw, "n_pos": int(np.sum(y == 1)), "epochs": cfg.epochs}
    return LocalResult(state=get_state(model), n_samples=int(n), loss=float(last_epoch_loss),
                       metrics=metrics)
