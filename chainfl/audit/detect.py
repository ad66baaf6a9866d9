"""Detect anomalous accounts on any chain with a task's audited model.

1. :func:`load_release` audits the task (:func:`chainfl.audit.audit_task`) and refuses the model if
   the history has any violation; it then takes the **release** recorded at ``closeTask`` (the final
   weights with the decision threshold, scaler, feature names and model config in the blob's meta,
   verified against its on-chain digest). A task closed without a release (or still running) falls
   back to its final model, the spec's scaler and features, and threshold 0.5 — said so in
   ``Release.source``.
2. :func:`score_chain` extracts account features from a block range of any chain
   (:func:`chainfl.data.features.extract_features`), applies the release's scaler, scores every
   account (fraud probability), labels it at the release threshold, and attributes the score to
   features (input × gradient of the logit on the scaled inputs: cheap, one backward pass).
3. :meth:`Scored.metrics` compares with known labels (precision/recall/F1 at the threshold, AUCs).

``score_chain(...).metrics(labels)`` is the evaluation of a release on a chain: ``chainfl detect
--labels`` prints it. It is the same pipeline as ``learning.evaluate`` on the chain's labelled
accounts (features -> release scaler -> model -> release threshold), so ``chainfl run``'s evaluation
of its release on its new chain gives identical numbers (``tests/cli/test_detect_cli.py``).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chainfl.errors import AuditError, ChainflError, DataError

log = logging.getLogger(__name__)

__all__ = ["Release", "Scored", "ModelRefusedError", "load_release", "release_from_blob", "score_dataset",
           "score_chain", "read_labels", "write_csv", "write_json"]


class ModelRefusedError(AuditError):
    """The task's model failed verification (or has no usable release); it is not used to score."""


@dataclass(frozen=True)
class Release:
    """A verified model ready to score accounts."""

    task_id: int
    digest: str                     # 0x sha256 of the blob, as recorded on chain
    cid: str
    state: "OrderedDict[str, np.ndarray]"
    model: object                   # learning.models.ModelConfig
    scaler: object                  # data.scaling.Scaler
    feature_names: tuple[str, ...]
    threshold: float
    source: str                     # "release" or "final model (no release recorded)"
    meta: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"task_id": self.task_id, "digest": self.digest, "cid": self.cid, "source": self.source,
                "threshold": self.threshold, "model": self.model.to_dict(),
                "feature_names": list(self.feature_names)}


def same_json(a, b) -> bool:
    """Equal as canonical JSON (tuples and lists alike, key order ignored)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def release_from_blob(blob: bytes, *, task_id: int, cid: str, spec=None, source: str = "release") -> Release:
    """Pure: a verified blob (+ the task spec for fallbacks) -> :class:`Release`.

    With ``spec`` (the verified task spec) the model config, scaler and feature names come from
    the spec, and a meta that states different ones is refused; without it, from the blob's meta.
    The threshold comes from the meta, else 0.5 (only for ``source != "release"``: a release must
    carry one).
    """
    from chainfl.data.scaling import Scaler
    from chainfl.learning.models import ModelConfig, expected_shapes
    from chainfl.storage.codec import decode_model, hex_digest

    state, meta = decode_model(blob)

    def pick(key: str, spec_value):
        value = meta.get(key)
        if spec is not None and spec_value:
            if value and not same_json(value, spec_value):
                raise ModelRefusedError(f"task {task_id}: the {source} {cid} states a {key!r} different from "
                                        f"the task spec's; it is not used to score accounts")
            value = spec_value
        if not value:
            raise ModelRefusedError(f"task {task_id}: the {source} {cid} has no {key!r} in its meta and the "
                                    f"task spec gives none; it cannot be used to score accounts")
        return value

    model = ModelConfig.from_dict(pick("model", getattr(spec, "model", None)))
    features = tuple(pick("feature_names", getattr(spec, "feature_names", None)))
    scaler = Scaler.from_dict(pick("scaler", getattr(spec, "scaler", None)))
    if tuple(scaler.feature_names) != features:
        raise ModelRefusedError(f"task {task_id}: the {source}'s scaler covers {list(scaler.feature_names)} "
                                f"but the model reads {list(features)}")
    if "threshold" in meta and meta["threshold"] is not None:
        threshold = float(meta["threshold"])
    elif source == "release":
        raise ModelRefusedError(f"task {task_id}: the release {cid} carries no decision threshold")
    else:
        threshold = 0.5
    order = list(expected_shapes(model, len(features)))
    if set(order) != set(state):
        raise ModelRefusedError(f"task {task_id}: the {source}'s tensors {sorted(state)} do not fit model "
                                f"{model.to_dict()} on {len(features)} features")
    state = OrderedDict((k, state[k]) for k in order)
    return Release(task_id, hex_digest(blob), cid, state, model, scaler, features, threshold, source, meta)


def load_release(chain, registry, store, task_id: int, *, audit: bool = True, timeout: float = 10.0,
                 from_block: int = 0):
    """Audit the task, then load its release (verified). Returns ``(release, audit_report)``.

    Raises :class:`ModelRefusedError` when the audit finds any violation (naming the first ones)
    or when the model cannot be used. ``audit=False`` skips the history audit but still verifies
    the release blob against its on-chain digest."""
    from chainfl.agents.spec import TaskSpec
    from chainfl.audit import audit_task
    from chainfl.audit.history import load_history
    from chainfl.storage.codec import fetch_verified

    report = None
    if audit:
        report = audit_task(chain, registry, store, task_id, from_block=from_block, timeout=timeout)
        if not report.ok:
            shown = "; ".join(str(v) for v in report.violations[:3])
            more = f" (+{len(report.violations) - 3} more)" if len(report.violations) > 3 else ""
            raise ModelRefusedError(f"task {task_id} fails its audit, its model is not used: {shown}{more}. "
                                    f"Run `chainfl audit --task {task_id}` for the full report.")
    history = load_history(registry, task_id, from_block=from_block)
    c = history.created
    try:
        spec = TaskSpec.from_bytes(fetch_verified(store, c.config_cid, c.config_digest, timeout=timeout))
    except ChainflError as e:
        raise ModelRefusedError(f"task {task_id}: its spec {c.config_cid} cannot be verified: {e}") from e
    closed = history.closed
    if closed is not None and closed.release_digest is not None:
        digest, cid, source = closed.release_digest, closed.release_cid, "release"
    else:
        task = registry.task(task_id)
        digest, source = task.head, "final model (no release recorded)"
        cid = _cid_of(history, digest)
        if cid is None:
            raise ModelRefusedError(f"task {task_id}: the head model 0x{digest.hex()} has no CID in the "
                                    f"task's events")
    try:
        blob = fetch_verified(store, cid, digest, timeout=timeout)
    except ChainflError as e:
        raise ModelRefusedError(f"task {task_id}: the {source} {cid} fails verification: {e}") from e
    return release_from_blob(blob, task_id=task_id, cid=cid, spec=spec, source=source), report


def _cid_of(history, digest: bytes) -> str | None:
    if history.created.initial_digest == digest:
        return history.created.initial_cid
    for h in reversed(history.handoffs):
        if h.digest == digest:
            return h.cid
    for r in reversed(history.rounds):
        if r.digest == digest:
            return r.cid
    return None


# --- scoring ----------------------------------------------------------------------------------
@dataclass
class Scored:
    """Every account's score on one chain range, with attributions."""

    addresses: list[str]
    scores: np.ndarray              # fraud probability [n] (float64)
    flagged: np.ndarray             # score >= threshold [n] (bool)
    attributions: np.ndarray        # input x gradient of the logit [n, d]
    feature_names: list[str]
    threshold: float
    from_block: int | None = None
    to_block: int | None = None
    seconds_extract: float = 0.0
    seconds_score: float = 0.0

    def ranked(self, top: int = 3) -> list[dict]:
        """Accounts by descending score (ties by address), with the ``top`` features that pushed the
        score up most (largest positive attribution)."""
        order = sorted(range(len(self.addresses)), key=lambda i: (-self.scores[i], self.addresses[i]))
        out = []
        for rank, i in enumerate(order, start=1):
            a = self.attributions[i]
            best = [j for j in np.argsort(-a, kind="stable")[:top] if a[j] > 0]
            out.append({"rank": rank, "address": self.addresses[i], "score": float(self.scores[i]),
                        "label": int(self.flagged[i]),
                        "top_features": [{"feature": self.feature_names[j], "attribution": float(a[j])}
                                         for j in best]})
        return out

    def metrics(self, labels: dict[str, int]) -> dict:
        """Metrics at the release threshold on the scored accounts that have a label."""
        from chainfl.learning.evaluate import metrics_from_scores

        wanted = {a.lower(): int(v) for a, v in labels.items()}
        idx = [i for i, a in enumerate(self.addresses) if a.lower() in wanted]
        if not idx:
            raise DataError("none of the scored accounts has a label; check that the labels belong to "
                            "this chain and block range")
        y = np.array([wanted[self.addresses[i].lower()] for i in idx], dtype=np.int64)
        out = metrics_from_scores(self.scores[idx], y, self.threshold)
        out["labelled"] = len(idx)
        out["unlabelled"] = len(self.addresses) - len(idx)
        out["labels_not_seen"] = len(wanted) - len(idx)
        return out


def score_dataset(release: Release, dataset) -> Scored:
    """Pure: score the rows of ``dataset`` (a :class:`chainfl.data.Dataset` holding the release's
    features, unscaled) with ``release``."""
    import torch

    from chainfl.learning.models import build_model, set_state

    ds = dataset.select(list(release.feature_names))
    X = release.scaler.transform(ds.X)                       # [n, d] float32
    model = build_model(release.model, X.shape[1], 0)
    set_state(model, release.state)
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(X)).requires_grad_(True)
    logits = model(x)                                        # [n]
    if len(ds):
        logits.sum().backward()                              # rows are independent: d logit_i / d x_i
        attributions = (x * x.grad).detach().numpy().astype(np.float64)
    else:
        attributions = np.zeros((0, X.shape[1]))
    scores = torch.sigmoid(logits.detach().double()).numpy()
    return Scored(list(ds.ids), scores, scores >= release.threshold, attributions,
                  list(release.feature_names), release.threshold)


def score_chain(release: Release, w3, from_block: int | None = None, to_block: int | None = None, *,
                progress: bool = False) -> Scored:
    """Extract account features from blocks ``from_block..to_block`` of the chain behind ``w3`` and
    score every (non-contract) account with ``release``."""
    from chainfl.data.features import extract_features

    t0 = time.perf_counter()
    features = extract_features(w3, from_block=from_block or 0, to_block=to_block, progress=progress)
    t1 = time.perf_counter()
    scored = score_dataset(release, features.dataset())
    scored.seconds_extract = t1 - t0
    scored.seconds_score = time.perf_counter() - t1
    scored.from_block = from_block or 0
    scored.to_block = features.state.next_block - 1
    return scored


# --- files ------------------------------------------------------------------------------------
_LABEL_COLUMNS = ("label", "flag", "is_fraud", "fraud", "y")
_ADDRESS_COLUMNS = ("address", "account", "id")


def read_labels(path: str | Path) -> dict[str, int]:
    """Labels by address from a CSV (``address`` + ``label`` columns, e.g. a saved simulation's
    ``labels.csv``), a directory holding ``labels.csv``, or a JSON object ``{address: 0|1}``."""
    path = Path(path)
    if path.is_dir():
        path = path / "labels.csv"
    if not path.exists():
        raise DataError(f"labels file {path} does not exist", path=str(path))
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
            data = data.get("labels", data)
            return {str(a).lower(): int(v) for a, v in data.items()}
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
            raise DataError(f"{path}: expected a JSON object address -> 0/1 ({e})", path=str(path)) from e
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        a_col = next((cols[c] for c in _ADDRESS_COLUMNS if c in cols), None)
        l_col = next((cols[c] for c in _LABEL_COLUMNS if c in cols), None)
        if a_col is None or l_col is None:
            raise DataError(f"{path}: needs an address column ({'/'.join(_ADDRESS_COLUMNS)}) and a label "
                            f"column ({'/'.join(_LABEL_COLUMNS)}); found {reader.fieldnames}", path=str(path))
        out = {}
        for row_no, row in enumerate(reader, start=2):
            try:
                value = int(float(row[l_col]))
            except (TypeError, ValueError):
                raise DataError(f"{path}:{row_no}: label {row[l_col]!r} is not 0/1", path=str(path),
                                column=l_col, row=row_no) from None
            if value not in (0, 1):
                raise DataError(f"{path}:{row_no}: label {value} is not 0/1", path=str(path), column=l_col,
                                row=row_no)
            out[row[a_col].strip().lower()] = value
    return out


def write_csv(scored: Scored, path: str | Path, top: int = 3) -> Path:
    """Ranked accounts: rank, address, score, label, top features (``name:+attribution;...``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "address", "score", "label", "top_features"])
        for row in scored.ranked(top):
            feats = ";".join(f"{t['feature']}:{t['attribution']:+.4f}" for t in row["top_features"])
            w.writerow([row["rank"], row["address"], f"{row['score']:.6f}", row["label"], feats])
    return path


def write_json(scored: Scored, path: str | Path, release: Release | None = None, metrics: dict | None = None,
               top: int = 3) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(detect_result(scored, release, metrics, top), indent=2, sort_keys=True) + "\n")
    return path


def detect_result(scored: Scored, release: Release | None = None, metrics: dict | None = None,
                  top: int = 3) -> dict:
    """JSON-able summary + ranked accounts."""
    return {"release": None if release is None else release.describe(),
            "from_block": scored.from_block, "to_block": scored.to_block,
            "accounts": len(scored.addresses), "flagged": int(scored.flagged.sum()),
            "threshold": scored.threshold, "metrics": metrics,
            "seconds": {"extract": round(scored.seconds_extract, 3), "score": round(scored.seconds_score, 3)},
            "ranked": scored.ranked(top)}
