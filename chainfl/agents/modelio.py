"""Models and specs through the store, verified against the digests on chain.

Thin I/O around the codec: every blob an agent uses is fetched by CID and checked against the
digest the chain records (:func:`chainfl.storage.codec.fetch_verified`) before it is parsed, and
model blobs are parsed only against the shapes the task's model must have. A blob that fails
either check raises (:class:`IntegrityError` / :class:`CodecError`) and is never loaded.

Blob meta (the safetensors ``__metadata__``) written by the agents, for auditors and ``detect``:

* node result / update: ``{"kind": "handoff"|"update", "task": id, "node": address, "step": s}``
  (``step``: chained seq before the handoff, federated round); a network's update blob holds its
  trained weights (the model's tensors), a gbdt node's update blob one float32 tensor
  ``"update"`` (its histograms for the round, :func:`chainfl.learning.gbdt.node_update`), whose
  length the round's global model fixes (:func:`load_update`);
* initial model: ``{"kind": "initial", "seed": seed}``;
* federated aggregate: ``{"kind": "aggregate", "task": id, "round": r}``;
* release: ``{"kind": "release", "task": id, "source": "0x<digest of the trained model>",
  "threshold": t, "scaler": Scaler.to_dict(), "feature_names": [...], "model": ModelConfig dict}``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from chainfl.agents.spec import TaskSpec
from chainfl.learning.models import ModelConfig, expected_layout, initial_model_state, model_inputs
from chainfl.learning.train import TrainConfig
from chainfl.storage.codec import decode_model, digest, encode_model, fetch_verified


@dataclass(frozen=True)
class Stored:
    """A blob put into the store: its sha256 (as recorded on chain) and CID."""

    digest: bytes
    cid: str
    blob: bytes

    @property
    def hex(self) -> str:
        return "0x" + self.digest.hex()


def put_blob(store, blob: bytes) -> Stored:
    cid = store.put(blob)
    return Stored(digest(blob), cid, blob)


def put_model(store, state, meta: dict) -> Stored:
    """Encode ``state`` with ``meta`` (deterministic bytes) and put it into ``store``."""
    return put_blob(store, encode_model(state, meta))


def model_config(spec: TaskSpec) -> ModelConfig:
    return ModelConfig.from_dict(spec.model)


def train_config(spec: TaskSpec) -> TrainConfig:
    return TrainConfig.from_dict(spec.train)


def expected_of_spec(spec: TaskSpec) -> dict:
    """name -> (shape, dtype) of the task's model, in the model's parameter order."""
    return OrderedDict(_expected(json.dumps(spec.model, sort_keys=True), len(spec.feature_names)))


@lru_cache(maxsize=64)
def _expected(model_json: str, n_features: int) -> tuple:
    layout = expected_layout(ModelConfig.from_dict(json.loads(model_json)), n_features)
    return tuple(layout.items())


def is_gbdt(spec: TaskSpec) -> bool:
    return spec.model.get("kind") == "gbdt"


def is_newton(spec: TaskSpec) -> bool:
    return spec.model.get("kind") == "newton"


def fitting(spec: TaskSpec):
    """The task's :class:`~chainfl.learning.newton.NewtonConfig` (newton tasks only)."""
    return _fitting(json.dumps(spec.model, sort_keys=True), len(spec.feature_names))


@lru_cache(maxsize=8)
def _fitting(model_json: str, n_features: int):
    return ModelConfig.from_dict(json.loads(model_json)).newton_settings(n_features)


def boosting(spec: TaskSpec):
    """The task's :class:`~chainfl.learning.gbdt.GBDTConfig` (gbdt tasks only)."""
    return model_config(spec).boosting(len(spec.feature_names))


def inputs(spec: TaskSpec, X) -> np.ndarray:
    """What the task's model reads from raw rows ``X`` (scaled for networks, raw for gbdt)."""
    from chainfl.data.scaling import Scaler

    return model_inputs(model_config(spec), Scaler.from_dict(spec.scaler), X)


def ordered_state(spec: TaskSpec, state) -> "OrderedDict":
    """``state`` in the task model's parameter order (the order its blobs are encoded in)."""
    return OrderedDict((name, state[name]) for name in expected_of_spec(spec))


def update_vector(spec: TaskSpec, state) -> np.ndarray:
    """The flat vector of a node's decoded update blob (gbdt: its histograms; networks: weights)."""
    from chainfl.learning.models import flatten

    if is_gbdt(spec):
        return np.asarray(state["update"], dtype=np.float32)
    return flatten(ordered_state(spec, state))


def update_layout(spec: TaskSpec, global_state) -> dict:
    """name -> (shape, dtype) of a node's update blob in a round on ``global_state``: the model's
    tensors (networks) or one float32 vector ``"update"`` whose length the global state fixes (gbdt)."""
    if not is_gbdt(spec):
        return expected_of_spec(spec)
    from chainfl.learning import gbdt

    size = gbdt.update_size(boosting(spec), {k: np.asarray(v) for k, v in global_state.items()})
    return OrderedDict(update=((size,), np.dtype(np.float32)))


#: Bytes a model blob may carry beyond its tensors: the safetensors header and the codec meta
#: (a release's meta holds the scaler and the feature names: ~10 kB for 50 features).
BLOB_HEADER_ALLOWANCE = 256 * 1024


def blob_cap(spec: TaskSpec) -> int:
    """The largest model blob of ``spec``'s task: its tensors' bytes plus the header allowance
    (``spec.limits["max_blob_bytes"]`` when the task records one)."""
    if spec.max_blob_bytes is not None:
        return spec.max_blob_bytes
    tensors = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in expected_of_spec(spec).values())
    if is_gbdt(spec):
        from chainfl.learning import gbdt

        tensors = max(tensors, gbdt.max_update_size(boosting(spec)) * 4)
    return tensors + BLOB_HEADER_ALLOWANCE


def initial_state(spec: TaskSpec):
    """The task's freshly initialised model (seeded by ``spec.seed``)."""
    return initial_model_state(model_config(spec), len(spec.feature_names), spec.seed)


def load_model(store, cid: str, expected_digest: bytes, spec: TaskSpec, timeout: float = 30.0):
    """Fetch ``cid``, verify it against ``expected_digest`` and decode it for ``spec``'s model.

    Returns ``(state, meta)`` with ``state`` in the model's parameter order; raises IntegrityError / CodecError / BlobNotFoundError otherwise."""
    blob = fetch_verified(store, cid, expected_digest, timeout=timeout, max_bytes=blob_cap(spec))
    expected = expected_of_spec(spec)
    state, meta = decode_model(blob, expected)
    return OrderedDict((name, state[name]) for name in expected), meta   # the model's own order


def load_update(store, cid: str, expected_digest: bytes, spec: TaskSpec, global_state, timeout: float = 30.0):
    """A node's federated update blob, verified: ``(state, meta)`` — the trained weights
    (networks) or ``{"update": vector}`` (gbdt), see :func:`update_layout`."""
    if not is_gbdt(spec):
        return load_model(store, cid, expected_digest, spec, timeout)
    blob = fetch_verified(store, cid, expected_digest, timeout=timeout, max_bytes=blob_cap(spec))
    return decode_model(blob, update_layout(spec, global_state))


#: Largest task spec read (a spec of 512 nodes with their sample counts is ~100 kB).
MAX_SPEC_BYTES = 4 * 2**20


def load_spec(store, cid: str, expected_digest: bytes, timeout: float = 30.0) -> TaskSpec:
    """Fetch the task config blob, verify it against the digest on chain, parse it."""
    return TaskSpec.from_bytes(fetch_verified(store, cid, expected_digest, timeout=timeout, max_bytes=MAX_SPEC_BYTES))


def node_seed(spec: TaskSpec, node_index: int, step: int) -> int:
    """Training seed of node ``node_index`` at ``step`` (chained: pass number; federated: round)."""
    return int(spec.seed) + 1000 * int(step) + int(node_index)
