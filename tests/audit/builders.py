"""Record honest training histories directly with the registry client, the store and the pure
learning/aggregation functions — independent of the agents, so the audit tests stand alone.

Models are real (tiny MLPs trained with ``train_local`` on synthetic data); every blob is stored
and recorded by digest + CID exactly as the agents do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from chainfl.agents.spec import TaskSpec
from chainfl.aggregation.strategies import Strategy, Update, get_strategy
from chainfl.chain.registry import Mode, Registry
from chainfl.data.scaling import Scaler
from chainfl.learning.evaluate import choose_threshold, predict_scores
from chainfl.learning.models import ModelConfig, build_model, flatten, get_state, unflatten
from chainfl.learning.train import TrainConfig, train_local
from chainfl.storage.codec import decode_model, digest, encode_model

FEATURES = ("f0", "f1", "f2", "f3")
MODEL = ModelConfig(kind="mlp", hidden=(6,))
TRAIN = TrainConfig(epochs=1, batch_size=16, lr=0.05, seed=0)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable-ish data: fraud rows have larger f0/f1."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    X = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    X[:, 0] += 2.0 * y
    X[:, 1] += 1.5 * y
    return X, y


@dataclass
class Recorded:
    chain: object
    registry: Registry
    store: object
    task_id: int
    spec: TaskSpec
    nodes: list
    coordinator: object
    digests: list = field(default_factory=list)     # every model digest recorded, in order
    cids: list = field(default_factory=list)
    release: tuple | None = None                    # (digest, cid) when recorded
    final_state: dict | None = None
    threshold: float = 0.5


def setup_registry(chain, n_nodes: int):
    a = chain.accounts
    registry = Registry.deploy(chain, a[0])
    registry.set_coordinator(a[1], True, a[0])
    nodes = [chain.account(2 + i) for i in range(n_nodes)]
    for n in nodes:
        registry.add_node(n, a[0])
    return registry, a[1], nodes


def _put(store, blob: bytes) -> tuple[bytes, str]:
    return digest(blob), store.put(blob)


def _spec(mode: str, nodes, rounds: int, strategy: Strategy | None, seed: int) -> TaskSpec:
    X, _ = synthetic(200, seed + 99)
    return TaskSpec(mode=mode, nodes=tuple(n.address for n in nodes), rounds=rounds, model=MODEL.to_dict(),
                    train=TRAIN.to_dict(), feature_names=FEATURES,
                    scaler=Scaler.fit(X, FEATURES).to_dict(),
                    strategy={} if strategy is None else strategy.spec(), seed=seed)


def release_meta(spec: TaskSpec, threshold: float) -> dict:
    return {"kind": "release", "threshold": threshold, "scaler": spec.scaler,
            "feature_names": list(spec.feature_names), "model": spec.model}


def _close(rec: Recorded, state) -> None:
    rec.final_state = state
    blob = encode_model(state, release_meta(rec.spec, rec.threshold))
    d, cid = _put(rec.store, blob)
    rec.registry.close_task(rec.task_id, d, cid, rec.coordinator)
    rec.release = (d, cid)


def record_chained(chain, store, n_nodes: int = 3, rounds: int = 2, seed: int = 0, reject_at: int | None = None,
                   close: bool = True, registry_nodes=None, dataset=None, model: ModelConfig = MODEL,
                   train: TrainConfig = TRAIN, skip_at: int | None = None) -> Recorded:
    """An honest chained task: ``rounds`` passes over ``n_nodes`` nodes. With ``reject_at=k``, the
    node receiving handoff k rejects it (recorded), then trains from the last accepted model.
    With ``dataset`` (a :class:`chainfl.data.Dataset`), nodes train on its rows split in order and
    the release threshold is the F1-best one on those rows; else on synthetic data. With
    ``skip_at=k``, the coordinator passes the turn after handoff k to the following node."""
    registry, coord, nodes = registry_nodes or setup_registry(chain, n_nodes)
    if dataset is None:
        spec = _spec("chained", nodes, rounds, None, seed)
        data = [synthetic(40, seed + i) for i in range(n_nodes)]
    else:
        spec = TaskSpec(mode="chained", nodes=tuple(n.address for n in nodes), rounds=rounds,
                        model=model.to_dict(), train=train.to_dict(), feature_names=tuple(dataset.feature_names),
                        scaler=Scaler.fit(dataset.X, dataset.feature_names).to_dict(), seed=seed)
        parts = np.array_split(np.arange(len(dataset)), n_nodes)
        data = [(dataset.X[p], dataset.y[p]) for p in parts]
    scaler = Scaler.from_dict(spec.scaler)
    features = len(spec.feature_names)
    spec_d, spec_cid = _put(store, spec.to_bytes())
    state = get_state(build_model(model, features, seed))
    head_d, head_cid = _put(store, encode_model(state, {"kind": "initial"}))
    task_id = registry.create_task(spec_d, spec_cid, Mode.CHAINED, head_d, head_cid, nodes[0], coord)
    rec = Recorded(chain, registry, store, task_id, spec, nodes, coord, [head_d], [head_cid])
    accepted_state, head_state = state, state
    seq = 0
    i = 0
    while seq < rounds * n_nodes:
        node = nodes[i % n_nodes]
        if skip_at is not None and seq == skip_at:
            registry.skip_turn(task_id, nodes[(i + 1) % n_nodes], coord)
            skip_at = None
            i += 1
            continue
        if reject_at is not None and seq == reject_at and seq > 0:
            registry.reject_handoff(task_id, head_d, "validation loss worse", node)
            head_state, head_d = accepted_state, rec.digests[-2]
            reject_at = None
        X, y = data[i % n_nodes]
        res = train_local(model, head_state, scaler.transform(X), y,
                          TrainConfig(**{**train.to_dict(), "seed": seed + i}))
        blob = encode_model(res.state, {"kind": "handoff", "seq": seq + 1})
        d, cid = _put(store, blob)
        nxt = nodes[(i + 1) % n_nodes]
        registry.record_handoff(task_id, head_d, d, cid, res.n_samples, res.loss, nxt, node)
        accepted_state, head_state, head_d = head_state, res.state, d
        rec.digests.append(d)
        rec.cids.append(cid)
        seq += 1
        i += 1
    if dataset is not None:
        scores = predict_scores(model, head_state, scaler.transform(dataset.X))
        rec.threshold = choose_threshold(scores, dataset.y)
    if close:
        _close(rec, head_state)
    return rec


def record_federated(chain, store, n_nodes: int = 4, rounds: int = 2, seed: int = 0,
                     strategy: str | Strategy = "fedavg", close: bool = True, poison: int | None = None,
                     registry_nodes=None) -> Recorded:
    """An honest federated task aggregated with ``strategy`` (flags recorded as the strategy says).
    With ``poison=i``, node i sends a boosted update every round (so screening can flag it)."""
    registry, coord, nodes = registry_nodes or setup_registry(chain, n_nodes)
    strat = strategy if isinstance(strategy, Strategy) else get_strategy(strategy)
    previous = None         # the global model of the round before (server momentum)
    spec = _spec("federated", nodes, rounds, strat, seed)
    data = [synthetic(40, seed + i) for i in range(n_nodes)]
    scaler = Scaler.from_dict(spec.scaler)
    spec_d, spec_cid = _put(store, spec.to_bytes())
    state = get_state(build_model(MODEL, len(FEATURES), seed))
    g_d, g_cid = _put(store, encode_model(state, {"kind": "initial"}))
    task_id = registry.create_task(spec_d, spec_cid, Mode.FEDERATED, g_d, g_cid, None, coord)
    rec = Recorded(chain, registry, store, task_id, spec, nodes, coord, [g_d], [g_cid])
    for r in range(1, rounds + 1):
        registry.open_round(task_id, chain.latest_timestamp() + 3600, coord)
        updates = []
        for i, node in enumerate(nodes):
            X, y = data[i]
            res = train_local(MODEL, state, scaler.transform(X), y,
                              TrainConfig(**{**TRAIN.to_dict(), "seed": seed + i + r * 1000}))
            new = res.state
            if poison == i:
                ref = flatten(state)
                new = unflatten(ref + 25.0 * (flatten(res.state) - ref), state)
            d, cid = _put(store, encode_model(new, {"kind": "update", "round": r}))
            registry.submit_update(task_id, r, g_d, d, cid, res.n_samples, res.loss, node)
            updates.append(Update(node=node.address, digest=d, state_vec=flatten(new), n_samples=res.n_samples))
            rec.digests.append(d)
            rec.cids.append(cid)
        result = strat.aggregate(updates, reference=flatten(state), previous=previous)
        for n in result.flagged:
            registry.flag_update(task_id, r, n, "screening outlier", coord)
        previous = flatten(state)
        state = unflatten(result.vector, state)
        g_d, g_cid = _put(store, encode_model(state, {"kind": "aggregate", "round": r}))
        registry.finalize_round(task_id, r, g_d, g_cid, result.included, coord)
        rec.digests.append(g_d)
        rec.cids.append(g_cid)
    if close:
        _close(rec, state)
    return rec


def decode(store, cid: str):
    return decode_model(store.get(cid))
