"""Detect anomalous accounts on any chain with a task's audited model.

1. :func:`load_release` audits the task (:func:`chainfl.audit.audit_task`) and refuses the model if
   the history has any violation; it then takes the **release** recorded at ``closeTask`` (the final
   weights with the decision threshold, scaler, feature names and model config in the blob's meta,
   verified against its on-chain digest). A task closed without a release (or still running) falls
   back to its final model, the spec's scaler and features, and threshold 0.5 — said so in
   ``Release.source``.
2. :func:`score_chain` first refuses a release that reads features a chain cannot give
   (:func:`require_chain_computable`, from :func:`chainfl.data.schema.chain_computable`), then
   extracts account features from a block range of any chain — an ordinary node will do, no archive
   state is read (:func:`chainfl.data.features.extract_features`) — of every account or only of the
   ``addresses`` asked for, applies the release's scaler, scores each account (fraud probability),
   and attributes the score to features (input × gradient of the logit on the scaled inputs: cheap,
   one backward pass).
3. The **alert** (``predicted``) is ``score >= threshold`` (the release's), limited by an optional
   alert cap: at most ``top`` accounts and/or at most ``floor(budget × n)`` of the ``n`` scored,
   highest scores first (:func:`alert_cap`). Both the threshold and the cap travel with every row.
4. :func:`out_of_distribution` checks the scaled inputs against the training distribution the
   release's scaler records: per feature, the accounts beyond ``|z| > 10`` (:data:`OOD_Z`); 1 %
   (:data:`OOD_MIN_SHARE`) of the accounts or more, and at least 3 (:data:`OOD_MIN_ROWS`), in any
   feature raise the warning, naming the worst features; each account's largest ``|z|`` is in its
   row. (A feature that was constant in training keeps std 1 in the scaler, so the check sees only
   large departures from its training value there.)
5. :meth:`Scored.metrics` compares with known labels (precision/recall/F1 at the threshold, AUCs,
   and the same for the capped alerts).

``score_chain(...).metrics(labels)`` is the evaluation of a release on a chain: ``chainfl detect
--labels`` prints it. It is the same pipeline as ``learning.evaluate`` on the chain's labelled
accounts (features -> release scaler -> model -> release threshold), so ``chainfl run``'s evaluation
of its release on its new chain gives identical numbers (``tests/cli/test_detect_cli.py``).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chainfl.data.datasets import Dataset
from chainfl.errors import AuditError, ChainflError, DataError

log = logging.getLogger(__name__)

__all__ = ["Release", "Scored", "ModelRefusedError", "FeaturesNotComputableError", "load_release",
           "release_from_blob", "require_chain_computable", "out_of_distribution", "alert_cap", "score_dataset",
           "score_chain", "read_labels", "read_addresses", "write_csv", "write_json", "detect_result"]


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
    from chainfl.errors import CodecError
    from chainfl.learning.models import ModelConfig, expected_layout
    from chainfl.storage.codec import check_state, decode_model, hex_digest

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
    layout = expected_layout(model, len(features))
    order = list(layout)
    if set(order) != set(state):
        raise ModelRefusedError(f"task {task_id}: the {source}'s tensors {sorted(state)} do not fit model "
                                f"{model.to_dict()} on {len(features)} features")
    try:
        check_state(state, layout)
    except CodecError as e:
        raise ModelRefusedError(f"task {task_id}: the {source} {cid} does not fit its model: {e}") from e
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


# --- what a chain can give ---------------------------------------------------------------------
class FeaturesNotComputableError(ModelRefusedError):
    """The release reads features that cannot be computed from a chain's blocks."""


def require_chain_computable(release: Release) -> None:
    """Refuse (before reading any block) a release that reads features a chain cannot give:
    :func:`chainfl.data.schema.chain_computable` names them and the set to train on instead."""
    from chainfl.data.schema import chain_computable, not_computable_message

    _, missing = chain_computable(release.feature_names)
    if missing:
        raise FeaturesNotComputableError(f"task {release.task_id}'s {release.source} cannot score a chain's "
                                         f"accounts: " + not_computable_message(missing, len(release.feature_names)))


# --- out-of-distribution inputs ------------------------------------------------------------------
#: |z| beyond which a model input counts as far outside the training distribution. The inputs are the
#: release scaler's output (signed log1p, then standardised with the training mean and std), so
#: |z| > 10 is ten training standard deviations on a log scale — e.g. 1e4 ether where training had
#: amounts near 1 — which the training data itself essentially never reaches.
OOD_Z = 10.0
#: Share of the scored accounts beyond |z| > OOD_Z, in one feature, that raises the warning ...
OOD_MIN_SHARE = 0.01
#: ... when they are at least this many (one odd account in a small range is not a shift).
OOD_MIN_ROWS = 3


def out_of_distribution(Z: np.ndarray, feature_names, *, z: float = OOD_Z, min_share: float = OOD_MIN_SHARE,
                        min_rows: int = OOD_MIN_ROWS, worst: int = 5) -> dict:
    """Pure: how far model inputs ``Z`` ``[n, d]`` (already scaled by the release's scaler) fall
    outside the training distribution.

    Rule: per feature, the rows with ``|z| > z``; the warning is raised when, in at least one
    feature, they are at least ``min_share`` of the rows and at least ``min_rows`` rows. The
    ``worst`` such features are named (most rows first, then largest ``|z|``). Scores of those
    accounts are extrapolations of the model. (Each account's own largest ``|z|`` is in
    :meth:`Scored.ranked` as ``max_abs_z``.)
    """
    Z = np.asarray(Z, dtype=np.float64)
    n = int(Z.shape[0])
    names = list(feature_names)
    absz = np.abs(Z)
    beyond = absz > z                                          # [n, d]
    counts = beyond.sum(axis=0) if n else np.zeros(len(names), dtype=int)
    max_abs = absz.max(axis=0) if n else np.zeros(len(names))
    hits = [j for j in range(len(names)) if n and counts[j] / n >= min_share and counts[j] >= min_rows]
    hits.sort(key=lambda j: (-counts[j], -max_abs[j], names[j]))
    features = [{"feature": names[j], "share": float(counts[j] / n), "rows": int(counts[j]),
                 "max_abs_z": float(max_abs[j])} for j in hits[:worst]]
    rows_beyond = int(beyond.any(axis=1).sum()) if n else 0
    out = {"warning": bool(hits), "z": float(z), "min_share": float(min_share), "min_rows": int(min_rows),
           "rows": n, "features_beyond": len(hits), "rows_beyond": rows_beyond,
           "rule": f"warn when, in any feature, at least {min_share:.0%} of the scored accounts (and at least "
                   f"{min_rows}) lie beyond |z| > {z:g} of the release scaler (training mean/std after "
                   f"signed log1p)",
           "features": features, "message": None}
    if hits:
        shown = "; ".join(f"'{f['feature']}' {f['share']:.0%} beyond, max |z| {f['max_abs_z']:.0f}" for f in features)
        out["message"] = (f"inputs fall far outside the training distribution: {len(hits)} of {len(names)} "
                          f"features have >= {min_share:.0%} of the {n} accounts beyond |z| > {z:g} ({shown}). "
                          f"Scores there are extrapolations: check that the model was trained on activity like "
                          f"this chain's (units, scale, kinds of accounts), or train one on such data.")
    return out


# --- alert policy ----------------------------------------------------------------------------------
def alert_cap(n: int, top: int | None = None, budget: float | None = None) -> int | None:
    """Pure: the most accounts that may be flagged among ``n`` scored: at most ``top``, at most
    ``floor(budget * n)``; None when neither is set."""
    from chainfl.errors import ConfigError

    caps = []
    if top is not None:
        if top < 0:
            raise ConfigError(f"--top must be 0 or more accounts, got {top}")
        caps.append(int(top))
    if budget is not None:
        if not 0.0 < budget <= 1.0:
            raise ConfigError(f"--budget is a share of the scored accounts in (0, 1], e.g. 0.01 for 1 %; got {budget}")
        caps.append(int(np.floor(budget * n + 1e-9)))
    return min(caps) if caps else None


# --- scoring ----------------------------------------------------------------------------------
@dataclass
class Scored:
    """Every scored account's score, prediction and attributions on one chain range.

    ``predicted`` is the alert: ``score >= threshold`` and, when an alert cap is set
    (:meth:`with_cap`), a rank within the cap (ranks by descending score, ties by address)."""

    addresses: list[str]
    scores: np.ndarray              # fraud probability [n] (float64)
    attributions: np.ndarray        # input x gradient of the logit [n, d]
    feature_names: list[str]
    threshold: float
    inputs: np.ndarray | None = None    # the model's inputs (scaled) [n, d]
    rank_cap: int | None = None     # at most this many flagged (from --top / --budget)
    top: int | None = None
    budget: float | None = None
    from_block: int | None = None
    to_block: int | None = None
    not_scored: dict = field(default_factory=dict)   # reason -> addresses asked for but not scored
    seconds_extract: float = 0.0
    seconds_score: float = 0.0

    @property
    def order(self) -> list[int]:
        """Row indices by descending score, ties by address."""
        return sorted(range(len(self.addresses)), key=lambda i: (-self.scores[i], self.addresses[i]))

    @property
    def ranks(self) -> np.ndarray:
        ranks = np.zeros(len(self.addresses), dtype=np.int64)
        for rank, i in enumerate(self.order, start=1):
            ranks[i] = rank
        return ranks

    @property
    def above_threshold(self) -> np.ndarray:
        return np.asarray(self.scores) >= self.threshold

    @property
    def predicted(self) -> np.ndarray:
        """The alerts [n] (bool)."""
        flagged = self.above_threshold
        if self.rank_cap is not None:
            flagged = flagged & (self.ranks <= self.rank_cap)
        return flagged

    @property
    def flagged(self) -> np.ndarray:   # the name used before alert caps existed
        return self.predicted

    def with_cap(self, top: int | None = None, budget: float | None = None) -> "Scored":
        """Pure: the same scores with at most ``top`` / ``budget`` x n accounts flagged."""
        from dataclasses import replace

        return replace(self, rank_cap=alert_cap(len(self.addresses), top, budget), top=top, budget=budget)

    def out_of_distribution(self, **kwargs) -> dict:
        if self.inputs is None:
            raise DataError("these scores carry no model inputs; score with score_dataset/score_chain")
        return out_of_distribution(self.inputs, self.feature_names, **kwargs)

    def ranked(self, explain: int = 3, labels: dict[str, int] | None = None) -> list[dict]:
        """Accounts by descending score with ``predicted``, the threshold, the alert cap, the
        account's largest scaled input ``max_abs_z`` (beyond :data:`OOD_Z`: outside the training
        data) and the ``explain`` features that pushed the score up most (largest positive
        attribution); with ``labels`` (known true labels by address) a ``label`` (None when unknown)."""
        predicted = self.predicted
        wanted = None if labels is None else {a.lower(): int(v) for a, v in labels.items()}
        out = []
        for rank, i in enumerate(self.order, start=1):
            a = self.attributions[i]
            best = [j for j in np.argsort(-a, kind="stable")[:explain] if a[j] > 0]
            row = {"rank": rank, "address": self.addresses[i], "score": float(self.scores[i]),
                   "predicted": int(predicted[i]), "threshold": self.threshold, "rank_cap": self.rank_cap,
                   "max_abs_z": None if self.inputs is None else float(np.abs(self.inputs[i]).max(initial=0.0)),
                   "top_features": [{"feature": self.feature_names[j], "attribution": float(a[j])}
                                    for j in best]}
            if wanted is not None:
                row["label"] = wanted.get(self.addresses[i].lower())
            out.append(row)
        return out

    def metrics(self, labels: dict[str, int]) -> dict:
        """Metrics on the scored accounts that have a label: at the release threshold (as
        ``learning.evaluate``), and of the alerts (``predicted``, i.e. with the alert cap) under
        ``"alerts"``."""
        from chainfl.learning.evaluate import metrics_from_scores

        wanted = {a.lower(): int(v) for a, v in labels.items()}
        idx = [i for i, a in enumerate(self.addresses) if a.lower() in wanted]
        if not idx:
            raise DataError("none of the scored accounts has a label; check that the labels belong to "
                            "this chain and block range (and to the --addresses given)")
        y = np.array([wanted[self.addresses[i].lower()] for i in idx], dtype=np.int64)
        out = metrics_from_scores(self.scores[idx], y, self.threshold)
        out["labelled"] = len(idx)
        out["unlabelled"] = len(self.addresses) - len(idx)
        out["labels_not_seen"] = len(wanted) - len(idx)
        pred = self.predicted[idx].astype(int)
        tp = int(((pred == 1) & (y == 1)).sum())
        precision = tp / int(pred.sum()) if pred.sum() else 0.0
        recall = tp / int(y.sum()) if y.sum() else 0.0
        out["alerts"] = {"flagged": int(pred.sum()), "true_positives": tp, "precision": precision,
                         "recall": recall,
                         "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                         "rank_cap": self.rank_cap}
        return out


def score_dataset(release: Release, dataset) -> Scored:
    """Pure: score the rows of ``dataset`` (a :class:`chainfl.data.Dataset` holding the release's
    features, unscaled) with ``release``."""
    import torch

    from chainfl.learning.models import build_model, set_state

    ds = dataset.select(list(release.feature_names))
    X = release.scaler.transform(ds.X)                       # [n, d] float32
    if release.model.kind == "gbdt":
        # trees read the raw values; attributions are Saabas path contributions (log-odds), the
        # scaled inputs still measure how far rows fall from the training distribution
        from chainfl.learning import gbdt

        cfg = release.model.boosting(X.shape[1])
        raw = np.nan_to_num(np.asarray(ds.X, dtype=np.float32))
        plain = {k: np.asarray(v) for k, v in release.state.items()}
        scores = gbdt.predict_proba(cfg, plain, raw) if len(ds) else np.zeros(0)
        attributions = gbdt.contributions(cfg, plain, raw)[0] if len(ds) else np.zeros((0, X.shape[1]))
        return Scored(list(ds.ids), scores, attributions, list(release.feature_names), release.threshold,
                      inputs=X.astype(np.float64))
    if release.model.kind == "newton":
        # a logistic regression on piecewise-linear encodings: each feature's log-odds
        # contribution is exact (the margin is the bias plus their sum)
        from chainfl.learning import newton

        cfg = release.model.newton_settings(X.shape[1])
        raw = np.nan_to_num(np.asarray(ds.X, dtype=np.float32))
        scores = newton.predict_proba(cfg, release.state, raw) if len(ds) else np.zeros(0)
        attributions = newton.contributions(cfg, release.state, raw)[0] if len(ds) else np.zeros((0, X.shape[1]))
        return Scored(list(ds.ids), scores, attributions, list(release.feature_names), release.threshold,
                      inputs=X.astype(np.float64))
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
    return Scored(list(ds.ids), scores, attributions, list(release.feature_names), release.threshold,
                  inputs=X.astype(np.float64))


def score_chain(release: Release, w3, from_block: int | None = None, to_block: int | None = None, *,
                addresses=None, top: int | None = None, budget: float | None = None,
                progress: bool = False) -> Scored:
    """Extract account features from blocks ``from_block..to_block`` of the chain behind ``w3`` (no
    archive state needed) and score every non-contract account — or only ``addresses`` — with
    ``release``; at most ``top`` / ``budget`` x n accounts are flagged.

    Refuses first, before reading a block, a release that reads features a chain cannot give.
    Addresses asked for but not scored are in ``Scored.not_scored`` (``not_seen``: no transaction
    in the range; ``contracts``: contracts are not scored)."""
    from chainfl.data.features import extract_features
    from chainfl.data.schema import canonical

    require_chain_computable(release)
    alert_cap(0, top, budget)                                # invalid values fail before extraction
    t0 = time.perf_counter()
    features = extract_features(w3, from_block=from_block or 0, to_block=to_block, progress=progress)
    t1 = time.perf_counter()
    ds = features.dataset()
    ds = Dataset(ds.X, ds.y, [_release_name(release, canonical(n)) for n in ds.feature_names], ds.ids, ds.source)
    not_scored = {}
    if addresses is not None:
        wanted = set(a.lower() for a in addresses)
        ds = ds.subset([i for i, a in enumerate(ds.ids) if a in wanted])
        accounts, contracts = features.state.accounts, features.state.contracts
        ordered = list(dict.fromkeys(a.lower() for a in addresses))
        not_scored = {"not_seen": [a for a in ordered if a not in accounts],
                      "contracts": [a for a in ordered if a in accounts and contracts.get(a)]}
    scored = score_dataset(release, ds).with_cap(top, budget)
    scored.seconds_extract = t1 - t0
    scored.seconds_score = time.perf_counter() - t1
    scored.from_block = from_block or 0
    scored.to_block = features.state.next_block - 1
    scored.not_scored = not_scored
    return scored


def _release_name(release: Release, name: str) -> str:
    """The release's spelling of a chain feature (a model may have kept the source's spaces)."""
    from chainfl.data.schema import canonical

    for own in release.feature_names:
        if canonical(own) == name:
            return own
    return name


# --- files ------------------------------------------------------------------------------------
_LABEL_COLUMNS = ("label", "flag", "is_fraud", "fraud", "y")
_ADDRESS_COLUMNS = ("address", "account", "id")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


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


def read_addresses(path: str | Path) -> list[str]:
    """Addresses to score, lower-case, in file order without repeats: a CSV with an ``address``
    column (also ``account``/``id``, any case, e.g. eth_fraud's ``Address``) or one address per
    line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"addresses file {path} does not exist (or is not a file)", path=str(path))
    lines = [(no, line.strip()) for no, line in enumerate(path.read_text().splitlines(), start=1)]
    lines = [(no, line) for no, line in lines if line and not line.startswith("#")]
    if not lines:
        raise DataError(f"{path} lists no addresses: give one address per line, or a CSV with an "
                        f"'address' column", path=str(path))
    first_no, first = lines[0]
    found: list[tuple[int, str]]
    if "," in first or not first.lower().startswith("0x"):          # a header: a CSV file
        reader = csv.reader(line for _, line in lines)
        header = [c.strip().lower() for c in next(reader)]
        column = next((header.index(c) for c in _ADDRESS_COLUMNS if c in header), None)
        if column is None:
            raise DataError(f"{path}:{first_no}: no address column ({'/'.join(_ADDRESS_COLUMNS)}) in the header "
                            f"{first!r}; name the column 'address', or list one address per line",
                            path=str(path))
        found = [(no, row[column].strip() if column < len(row) else "")
                 for (no, _), row in zip(lines[1:], reader)]
    else:
        found = lines
    out = []
    for no, address in found:
        if not _ADDRESS.match(address):
            raise DataError(f"{path}:{no}: {address!r} is not an address (0x and 40 hex digits); fix or "
                            f"remove that line", path=str(path), row=no)
        out.append(address.lower())
    if not out:
        raise DataError(f"{path} has a header but no addresses under it", path=str(path))
    return list(dict.fromkeys(out))


CSV_COLUMNS = ("rank", "address", "score", "predicted", "threshold", "rank_cap", "max_abs_z", "top_features")


def write_csv(scored: Scored, path: str | Path, explain: int = 3, labels: dict[str, int] | None = None) -> Path:
    """Ranked accounts: ``rank, address, score, predicted, threshold, rank_cap, max_abs_z,
    top_features`` (``name:+attribution;...``), plus ``label`` (the true label; empty when unknown)
    with ``labels``.
    ``predicted`` is the alert (``score >= threshold`` and ``rank <= rank_cap`` when a cap is set)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*CSV_COLUMNS, *(["label"] if labels is not None else [])])
        for row in scored.ranked(explain, labels):
            feats = ";".join(f"{t['feature']}:{t['attribution']:+.4f}" for t in row["top_features"])
            cells = [row["rank"], row["address"], f"{row['score']:.6f}", row["predicted"], repr(row["threshold"]),
                     "" if row["rank_cap"] is None else row["rank_cap"],
                     "" if row["max_abs_z"] is None else f"{row['max_abs_z']:.2f}", feats]
            if labels is not None:
                cells.append("" if row["label"] is None else row["label"])
            w.writerow(cells)
    return path


def write_json(scored: Scored, path: str | Path, release: Release | None = None, metrics: dict | None = None,
               explain: int = 3, labels: dict[str, int] | None = None, **extra) -> Path:
    """The :func:`detect_result` summary with every ranked account (``"ranked"``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = detect_result(scored, release, metrics, explain, labels, ranked=True, **extra)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return path


def detect_result(scored: Scored, release: Release | None = None, metrics: dict | None = None,
                  explain: int = 3, labels: dict[str, int] | None = None, *, ranked: bool = False,
                  **extra) -> dict:
    """JSON-able summary: release, range, accounts, alert policy, out-of-distribution check,
    metrics, the flagged accounts (``"alerts"``) and, with ``ranked``, every account."""
    rows = scored.ranked(explain, labels)
    out = {"release": None if release is None else release.describe(),
           "from_block": scored.from_block, "to_block": scored.to_block,
           "accounts": len(scored.addresses), "not_scored": scored.not_scored,
           "threshold": scored.threshold,
           "alert_policy": {"threshold": scored.threshold, "top": scored.top, "budget": scored.budget,
                            "rank_cap": scored.rank_cap},
           "flagged": int(scored.predicted.sum()), "above_threshold": int(scored.above_threshold.sum()),
           "out_of_distribution": scored.out_of_distribution() if scored.inputs is not None else None,
           "metrics": metrics,
           "seconds": {"extract": round(scored.seconds_extract, 3), "score": round(scored.seconds_score, 3)},
           "alerts": [r for r in rows if r["predicted"]], **extra}
    if ranked:
        out["ranked"] = rows
    return out
