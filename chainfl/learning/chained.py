"""Chained training with a validation gate (in process, no chain).

The model visits the nodes in order for R rounds. Each node, on receiving the previous node's
model ("incoming"), scores it on its own held-out validation slice against the last model it
accepted and rejects it when it is clearly worse; it then trains from the last accepted model
(the incoming one when accepted) and hands its result on. One poisoner therefore costs the chain one
hand-off instead of ruining everything downstream.

Why not a loss ratio: under label skew a receiver's slice has few or no positives, so an honest
model trained on differently-skewed data can have a much higher mean loss there, while a poisoned
one can look fine. The gate instead combines two checks:

1. **Step size.** ``||incoming - accepted|| / steps`` (steps = the sender's optimiser steps, from
   its claimed sample count) must not exceed ``max_step_ratio`` x the median of the steps accepted
   so far. Boosted / sign-flipped / noisy replacements are many times larger than honest steps.
2. **Paired, class-balanced loss test.** Per-sample losses of both models on the same slice, each
   class weighted to half the total (all weight on the one class present if the slice has one),
   give a paired mean difference ``D`` and its standard error ``SE``. Reject when
   ``D > tolerance + z * SE``: clearly worse beyond what the slice's size and noise explain.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from chainfl.aggregation.attacks import AttackConfig, poison_labels, poison_update
from chainfl.errors import LearningError
from chainfl.learning.models import ModelConfig, build_model, flatten, get_state, set_state, unflatten
from chainfl.learning.train import TrainConfig, train_local


@dataclass(frozen=True)
class NodeData:
    """One node's local data: a training part and a held-out validation slice."""

    X: np.ndarray
    y: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


def class_balanced_weights(y: np.ndarray) -> np.ndarray:
    """Per-sample weights summing to 1, each present class getting an equal share."""
    y = np.asarray(y).astype(int)
    w = np.zeros(y.size, dtype=np.float64)
    classes = [c for c in (0, 1) if np.any(y == c)]
    for c in classes:
        mask = y == c
        w[mask] = 1.0 / (len(classes) * mask.sum())
    return w


def per_sample_losses(model_cfg: ModelConfig, state: Mapping[str, np.ndarray], X: np.ndarray,
                      y: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each row [n] (float64)."""
    X = np.asarray(X, dtype=np.float32)
    model = build_model(model_cfg, X.shape[1], 0)
    set_state(model, state)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(X)).double()                 # [n]
        yt = torch.from_numpy(np.asarray(y, dtype=np.float64))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, reduction="none")
    return loss.numpy()


@dataclass(frozen=True)
class ValidationGate:
    """Decides whether a receiver accepts an incoming model (see the module docstring)."""

    tolerance: float = 0.02       # allowed increase of the class-balanced loss (nats)
    z: float = 2.0                # ... plus this many standard errors of the paired difference
    max_step_ratio: float = 3.0   # per-step size above this x the median accepted step: reject
    min_history: int = 3          # accepted steps needed before the step check applies

    def to_dict(self) -> dict:
        return asdict(self)

    def score(self, model_cfg: ModelConfig, state: Mapping[str, np.ndarray], X_val: np.ndarray,
              y_val: np.ndarray) -> dict:
        """What the gate needs about a model on the receiver's slice."""
        losses = per_sample_losses(model_cfg, state, X_val, y_val)
        w = class_balanced_weights(y_val)
        return {"losses": losses, "weights": w, "loss": float(np.dot(w, losses))}

    def check(self, incoming: Mapping, accepted: Mapping, step: float | None = None,
              step_history: Sequence[float] = ()) -> tuple[bool, str]:
        """``(accept, reason)`` for scores from :meth:`score` of the incoming and accepted model.

        ``step`` is the incoming model's per-step distance from the accepted one, ``step_history``
        the per-step distances of hand-offs accepted before."""
        if step is not None and len(step_history) >= self.min_history:
            typical = float(np.median(step_history))
            if typical > 0 and step > self.max_step_ratio * typical:
                return False, (f"step {step:.3g} is {step / typical:.1f}x the median accepted step "
                               f"(limit {self.max_step_ratio}x)")
        li, la, w = np.asarray(incoming["losses"]), np.asarray(accepted["losses"]), np.asarray(incoming["weights"])
        if li.size == 0:
            return True, "no validation rows: accepted unchecked"
        d = li - la
        D = float(np.dot(w, d))
        se = float(np.sqrt(np.dot(w ** 2, (d - D) ** 2)))
        limit = self.tolerance + self.z * se
        if D > limit:
            return False, (f"class-balanced validation loss rose by {D:.4f} "
                           f"(limit {limit:.4f} = {self.tolerance} + {self.z} x SE {se:.4f})")
        return True, f"loss change {D:+.4f} within {limit:.4f}"


@dataclass
class ChainedResult:
    state: "OrderedDict[str, np.ndarray]"        # the last accepted model
    history: list[dict] = field(default_factory=list)  # one entry per gate decision

    def counts(self) -> dict:
        """Rejections split by whether the sender was malicious."""
        c = {"malicious_rejected": 0, "malicious_accepted": 0, "honest_rejected": 0, "honest_accepted": 0}
        for h in self.history:
            who = "malicious" if h["malicious_sender"] else "honest"
            c[f"{who}_{'accepted' if h['accepted'] else 'rejected'}"] += 1
        return c


def _steps(n_samples: int, cfg: TrainConfig) -> int:
    return max(1, cfg.epochs * math.ceil(n_samples / cfg.batch_size))


def run_chained(model_cfg: ModelConfig, train_cfg: TrainConfig, nodes: Sequence[NodeData], rounds: int,
                gate: ValidationGate | None = None, initial_state: Mapping[str, np.ndarray] | None = None,
                malicious: Sequence[int] = (), attack: AttackConfig | None = None,
                on_round: Callable[[int, Mapping[str, np.ndarray]], None] | None = None) -> ChainedResult:
    """Pass the model through ``nodes`` in order for ``rounds`` rounds.

    Without a gate every hand-off is accepted. Malicious nodes (indices) apply ``attack`` to their
    labels or their trained model. The final hand-off is checked by node 0, the next receiver.
    ``on_round(r, accepted_state)`` is called after each full pass. Local training of node ``i``
    in round ``r`` uses seed ``train_cfg.seed + 1000 * r + i``.
    """
    if not nodes:
        raise LearningError("chained training needs at least one node")
    if rounds < 1:
        raise LearningError(f"rounds must be >= 1, got {rounds}")
    bad = set(int(i) for i in malicious)
    attack = attack or AttackConfig()
    d = np.asarray(nodes[0].X).shape[1]
    accepted = OrderedDict(initial_state) if initial_state is not None else get_state(
        build_model(model_cfg, d, train_cfg.seed))
    shapes = OrderedDict((k, v.shape) for k, v in accepted.items())
    head: OrderedDict | None = None          # a model handed on and not yet checked
    head_meta: dict = {}
    step_history: list[float] = []
    result = ChainedResult(state=accepted)

    def receive(i: int, r: int):
        nonlocal accepted, head
        if head is None:
            return
        acc_vec, head_vec = flatten(accepted), flatten(head)
        step = float(np.linalg.norm(head_vec.astype(np.float64) - acc_vec)) / head_meta["steps"]
        if gate is None:
            ok, reason = True, "no gate"
        else:
            node = nodes[i]
            ok, reason = gate.check(gate.score(model_cfg, head, node.X_val, node.y_val),
                                    gate.score(model_cfg, accepted, node.X_val, node.y_val),
                                    step, step_history)
        result.history.append({"round": r, "receiver": i, "sender": head_meta["sender"],
                               "malicious_sender": head_meta["sender"] in bad, "accepted": ok,
                               "reason": reason, "step": step})
        if ok:
            accepted = head
            step_history.append(step)
        head = None

    for r in range(rounds):
        for i, node in enumerate(nodes):
            receive(i, r)
            # train from the last accepted model; a malicious node poisons labels or its result
            cfg = replace(train_cfg, seed=train_cfg.seed + 1000 * r + i)
            y = poison_labels(attack, node.y) if i in bad else node.y
            res = train_local(model_cfg, accepted, node.X, y, cfg)
            out = res.state
            if i in bad and attack.poisons_model:
                out = unflatten(poison_update(attack, flatten(res.state), flatten(accepted), 1000 * r + i), shapes)
            head, head_meta = out, {"sender": i, "steps": _steps(res.n_samples, train_cfg)}
        if on_round is not None:
            on_round(r, accepted)
    receive(0, rounds)
    result.state = accepted
    return result
