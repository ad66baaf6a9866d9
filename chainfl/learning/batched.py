"""Many nodes' local training at once: the fast path of the in-process experiment runner.

``train_many`` runs :func:`chainfl.learning.train.train_local`'s algorithm for K nodes in one set
of batched tensor operations (``torch.bmm`` over a leading node axis): the same per-node shuffles
(each node's ``torch.randperm`` from its own seed), the same mini-batches, loss, positive-class
weight, FedProx term and Adam/SGD update rule, with per-node step counts so a node with fewer
batches stops when its epoch ends. Results agree with ``train_local`` to float32 rounding
(~1e-6; tested), not bit for bit — the agents, whose outputs are hashed on chain, use
``train_local``; experiments use this for speed (a 50-node round is one loop of <= max-batches
steps instead of 50 separate training loops).

Dropout is not supported here (it would draw different masks than ``train_local``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Mapping, Sequence

import numpy as np
import torch

from chainfl.errors import LearningError
from chainfl.learning.models import ModelConfig, expected_shapes
from chainfl.learning.train import LocalResult, TrainConfig, _check_xy, resolve_pos_weight


def train_many(model_cfg: ModelConfig, states: Sequence[Mapping[str, np.ndarray]] | Mapping[str, np.ndarray],
               data: Sequence[tuple[np.ndarray, np.ndarray]], cfg: TrainConfig,
               seeds: Sequence[int]) -> list[LocalResult]:
    """Train node k from ``states[k]`` (or one shared state) on ``data[k]`` with ``seeds[k]``."""
    K = len(data)
    if K == 0:
        raise LearningError("train_many needs at least one node's data")
    if len(seeds) != K:
        raise LearningError(f"{len(seeds)} seeds for {K} nodes")
    if model_cfg.dropout > 0:
        raise LearningError("train_many does not support dropout; use train_local per node")
    per_node = [_check_xy(X, y) for X, y in data]
    d = per_node[0][0].shape[1]
    names = list(expected_shapes(model_cfg, d))
    if isinstance(states, Mapping):
        states = [states] * K
    if len(states) != K:
        raise LearningError(f"{len(states)} starting states for {K} nodes")

    # 1. parameters stacked over nodes: W [K, out, in], b [K, out]
    params = [torch.from_numpy(np.stack([np.asarray(s[n], dtype=np.float32) for s in states])).clone()
              for n in names]
    for p in params:
        p.requires_grad_(True)
    start = [p.detach().clone() for p in params]
    n_layers = len(params) // 2

    # 2. per-node batches: the same shuffles as train_local, laid out as one gather index
    #    idx[s, k, :] = rows (into X_all) of node k's batch at step s; the pad row is all zeros
    B = cfg.batch_size
    sizes = [X.shape[0] for X, _ in per_node]
    n_batches = [math.ceil(n / B) for n in sizes]
    steps = [cfg.epochs * nb for nb in n_batches]
    S = max(steps)
    offsets = np.cumsum([0] + sizes)
    pad = int(offsets[-1])
    X_all = torch.from_numpy(np.concatenate([X for X, _ in per_node] + [np.zeros((1, d), np.float32)]))
    y_all = torch.from_numpy(np.concatenate([y for _, y in per_node] + [np.zeros(1, np.float32)]))
    idx = np.full((S, K, B), pad, dtype=np.int64)
    for k, (seed, n) in enumerate(zip(seeds, sizes)):
        gen = torch.Generator().manual_seed(int(seed))
        for e in range(cfg.epochs):
            order = torch.randperm(n, generator=gen).numpy() + offsets[k]
            for i in range(n_batches[k]):
                chunk = order[i * B:(i + 1) * B]
                idx[e * n_batches[k] + i, k, :chunk.size] = chunk
    idx_t = torch.from_numpy(idx)
    masks = torch.from_numpy((idx != pad).astype(np.float32))                        # [S, K, B]
    actives = masks.sum(2) > 0                                                        # [S, K]
    pw = torch.tensor([resolve_pos_weight(y, cfg.pos_weight, cfg.max_pos_weight) for _, y in per_node],
                      dtype=torch.float32)                                           # [K]

    # 3. optimiser state per node
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    t = torch.zeros(K)
    b1, b2, eps = 0.9, 0.999, 1e-8
    epoch_loss = torch.zeros(K, dtype=torch.float64)
    last_epoch_loss = torch.zeros(K, dtype=torch.float64)

    for s in range(S):
        # 3a. every node's batch at this step, padded to B and masked: xb [K, B, d]
        xb = X_all[idx_t[s]]
        yb = y_all[idx_t[s]]
        mask = masks[s]
        active = actives[s]
        count = mask.sum(1).clamp(min=1.0)                                          # [K]

        # 3b. forward [K, B, d] -> logits [K, B]; per-node mean loss (+ prox)
        h = xb
        for layer in range(n_layers):
            W, b = params[2 * layer], params[2 * layer + 1]
            h = torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))
            if layer < n_layers - 1:
                h = torch.relu(h)
        logits = h.squeeze(-1)
        lossm = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, yb, pos_weight=pw.unsqueeze(1), reduction="none")              # [K, B]
        node_loss = (lossm * mask).sum(1) / count                                   # [K]
        with torch.no_grad():
            epoch_loss += (node_loss.detach() * mask.sum(1)).double()
        total = node_loss.sum()
        if cfg.prox_mu > 0:
            act = active.float()
            for p, p0 in zip(params, start):
                diff = (p - p0).pow(2).reshape(K, -1).sum(1)
                total = total + 0.5 * cfg.prox_mu * (diff * act).sum()
        for p in params:
            p.grad = None
        total.backward()

        # 3c. optimiser step for active nodes only
        with torch.no_grad():
            t += active.float()
            for j, p in enumerate(params):
                g = p.grad
                shape = (K,) + (1,) * (p.dim() - 1)
                a = active.view(shape)
                if cfg.weight_decay:
                    g = g + cfg.weight_decay * p
                if cfg.optimizer == "adam":
                    m_new = b1 * m[j] + (1 - b1) * g
                    v_new = b2 * v[j] + (1 - b2) * g * g
                    m[j] = torch.where(a, m_new, m[j])
                    v[j] = torch.where(a, v_new, v[j])
                    tt = t.clamp(min=1.0).view(shape)
                    bc1 = 1 - b1 ** tt
                    bc2 = 1 - b2 ** tt
                    upd = (m[j] / bc1) / ((v[j] / bc2).sqrt() + eps) * cfg.lr
                else:
                    if cfg.momentum:
                        buf = torch.where(t.view(shape) <= 1, g, cfg.momentum * m[j] + g)
                        m[j] = torch.where(a, buf, m[j])
                        upd = cfg.lr * m[j]
                    else:
                        upd = cfg.lr * g
                p.sub_(torch.where(a, upd, torch.zeros_like(upd)))

        # 3d. epoch bookkeeping: the reported loss is the last epoch's mean
        for k in range(K):
            if s < steps[k] and (s + 1) % n_batches[k] == 0:
                last_epoch_loss[k] = epoch_loss[k] / sizes[k]
                epoch_loss[k] = 0.0

    out = []
    for k in range(K):
        state = OrderedDict((n, p[k].detach().numpy().astype(np.float32, copy=True))
                            for n, p in zip(names, params))
        y = per_node[k][1]
        out.append(LocalResult(state=state, n_samples=sizes[k], loss=float(last_epoch_loss[k]),
                               metrics={"pos_weight": float(pw[k]), "n_pos": int(np.sum(y == 1)),
                                        "epochs": cfg.epochs}))
    return out
