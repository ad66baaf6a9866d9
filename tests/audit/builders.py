"""Record honest training histories directly with the registry client, the store and the pure
learning/aggregation functions — independent of the agents, so the audit tests stand alone.

Models are real (tiny MLPs trained with ``train_local`` on synthetic data); every blob is stored
and recorded by digest + CID exactly as the agents do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from chainfl.agents.reports import NodeReport, evidence_blob
from chainfl.agents.spec import TaskSpec
from chainfl.agents.threshold import merge_histograms, score_histogram, threshold_from_histogram
from chainfl.aggregation.decision import Candidate, decide_round
from chainfl.aggregation.strategies import Strategy, get_strategy
from chainfl.chain.registry import Mode, Registry, RoundDecision
from chainfl.data.scaling import Scaler
from chainfl.learning.evaluate import predict_scores
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
    reports: list = field(default_factory=list)     # signed validation reports on the final model


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


def release_meta(spec: TaskSpec, threshold: float, reported: int = 0) -> dict:
    return {"kind": "release", "threshold": threshold, "reported_nodes": reported, "scaler": spec.scaler,
            "feature_names": list(spec.feature_names), "model": spec.model}


def sign_reports(rec: Recorded, state, data) -> None:
    """Each node's validation histogram of ``state`` on its rows (``data[i]``), to be signed on
    the final model when the task is closed (see :func:`_close`)."""
    scaler = Scaler.from_dict(rec.spec.scaler)
    model = ModelConfig.from_dict(rec.spec.model)
    rec.reports = [(node, score_histogram(predict_scores(model, state, scaler.transform(X)), y))
                   for node, (X, y) in zip(rec.nodes, data)]


def _close(rec: Recorded, state, final_digest: bytes | None = None) -> None:
    """Release ``state`` (the final model, whose digest on chain is ``final_digest``) with the
    threshold from the nodes' signed reports on it, recorded as evidence, as the coordinator does."""
    rec.final_state = state
    evidence = None
    if rec.reports and final_digest is not None:
        hexd = "0x" + final_digest.hex()
        reports = [NodeReport(rec.task_id, node.address, {hexd: hist}).signed(node) for node, hist in rec.reports]
        rec.threshold, _ = threshold_from_histogram(merge_histograms([h for _, h in rec.reports]))
        evidence = _put(rec.store, evidence_blob(rec.task_id, hexd, reports))
    blob = encode_model(state, release_meta(rec.spec, rec.threshold, len(rec.reports) if evidence else 0))
    d, cid = _put(rec.store, blob)
    rec.registry.close_task(rec.task_id, d, cid, rec.coordinator, "planned rounds done",
                            evidence_digest=evidence[0] if evidence else None,
                            evidence_cid=evidence[1] if evidence else None)
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
    task_id = registry.create_task(spec_d, spec_cid, Mode.CHAINED, head_d, head_cid, nodes, coord)
    rec = Recorded(chain, registry, store, task_id, spec, nodes, coord, [head_d], [head_cid])
    accepted_state, head_state = state, state
    accepted_d = head_d
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
            head_state, head_d = accepted_state, accepted_d
            reject_at = None
        X, y = data[i % n_nodes]
        res = train_local(model, head_state, scaler.transform(X), y,
                          TrainConfig(**{**train.to_dict(), "seed": seed + i}))
        blob = encode_model(res.state, {"kind": "handoff", "task": task_id, "node": node.address, "step": seq})
        d, cid = _put(store, blob)
        nxt = nodes[(i + 1) % n_nodes]
        registry.record_handoff(task_id, head_d, d, cid, res.n_samples, res.loss, nxt, node)
        accepted_state, accepted_d, head_state, head_d = head_state, head_d, res.state, d
        rec.digests.append(d)
        rec.cids.append(cid)
        seq += 1
        i += 1
    if dataset is not None:          # every node (the final checker too) checked and reported the head
        sign_reports(rec, head_state, data)
        if close:
            _close(rec, head_state, head_d)
    elif close:                      # nobody checked the final head: the last accepted model is released
        _close(rec, accepted_state, accepted_d)
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
    task_id = registry.create_task(spec_d, spec_cid, Mode.FEDERATED, g_d, g_cid, nodes, coord)
    rec = Recorded(chain, registry, store, task_id, spec, nodes, coord, [g_d], [g_cid])
    for r in range(1, rounds + 1):
        registry.open_round(task_id, chain.latest_timestamp() + 3600, coord)
        candidates = []
        for i, node in enumerate(nodes):
            X, y = data[i]
            res = train_local(MODEL, state, scaler.transform(X), y,
                              TrainConfig(**{**TRAIN.to_dict(), "seed": seed + i + r * 1000}))
            new = res.state
            if poison == i:
                ref = flatten(state)
                new = unflatten(ref + 25.0 * (flatten(res.state) - ref), state)
            meta = {"kind": "update", "task": task_id, "node": node.address, "step": r}
            d, cid = _put(store, encode_model(new, meta))
            registry.submit_update(task_id, r, g_d, d, cid, res.n_samples, res.loss, node)
            candidates.append(Candidate(node.address, d, res.n_samples, vector=flatten(new), meta=meta))
            rec.digests.append(d)
            rec.cids.append(cid)
        outcome = decide_round(candidates, strat, task_id=task_id, round_=r, reference=flatten(state),
                               previous=previous)
        previous = flatten(state)
        state = unflatten(outcome.vector, state)
        g_d, g_cid = _put(store, encode_model(state, {"kind": "aggregate", "round": r}))
        registry.finalize_round(task_id, r, g_d, g_cid, RoundDecision(outcome.included, outcome.excluded,
                                                                     outcome.flagged), coord)
        rec.digests.append(g_d)
        rec.cids.append(g_cid)
    if close:
        _close(rec, state, g_d)
    return rec


def decode(store, cid: str):
    return decode_model(store.get(cid))
