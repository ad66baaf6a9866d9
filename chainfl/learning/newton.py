"""Chained Newton: a logistic regression on piecewise-linear encodings, fitted pass by pass.

The model is a logistic regression on the **piecewise-linear encoding** of the raw features
(:class:`chainfl.learning.encoding.PLEncoder`, bins agreed from the nodes' merged grid counts,
no rows shared) plus a bias: ``p = sigmoid(Z theta)``, ``Z = [PLE(x), 1]`` with every entry of
``Z`` in ``[0, 1]``. It is fitted by Newton's method on the pooled, L2-regularised log-loss
``sum_i loss_i + lambda/2 |theta without bias|^2``, one Newton step per **pass** over the nodes:

* the travelling state holds the weights ``w`` at which the pass evaluates, the running sums
  ``G = sum Z^T (p - y)`` and ``H = sum Z^T diag(p (1 - p)) Z`` (upper triangle, packed) of
  the accepted handoffs of the pass so far, ``count`` (how many) and ``pass`` (which pass);
* a node adds its rows' ``G`` and ``H`` at ``w`` and hands the state on (``w`` unchanged);
* the first handoff of a new pass (handoff ``k`` belongs to pass ``(k - 1) // n_nodes``, fixed by
  the chain's sequence number) first takes the Newton step ``w <- w - (H + lambda I')^{-1}
  (G + lambda I' w)`` (``I'``: identity without the bias) of the pass before, resets the sums and
  adds its own at the new ``w``. A rejected handoff's sums are simply missing from its pass, and
  if it was the pass's first, the next handoff of the pass takes the step;
* the model a state stands for (:func:`weights`, used by ``predict``/``detect``/reports) is that
  Newton step applied to whatever the state holds: after the last pass, the last step.

Because the sums are over all nodes' rows at one ``w``, each pass's step is exactly the step of
pooled Newton (up to float64 summation order), whatever the partition: the result does not
depend on label skew, and five passes reach the pooled fit.

**What a receiver checks** (:func:`check_handoff`; deterministic from the two states, the
handoff's claimed rows, the pass and the producer's pass-0 handoff, so the audit re-checks every
handoff):

* ``w`` is the parent's (same pass: bit for bit) or the Newton step of the parent (new pass:
  recomputed to a relative 1e-9), ``count`` the parent's + 1 (or 1), ``pass`` the handoff's;
* the added sums are what ``n`` rows *can* add: ``|dG_j| <= n``, ``0 <= dH_jj <= dH_jb <= dH_bb
  <= n / 4`` (``z^2 <= z <= 1``), ``|dH_jk| <= sqrt(dH_jj dH_kk)``, ``dH`` positive semi-definite;
* **pass 0** runs at ``w = 0``, where every row adds ``p (1 - p) = 1/4`` and ``|p - y| = 1/2``:
  ``dH`` is exactly a quarter of the node's Gram matrix ``Z^T Z`` (``dH_bb = n / 4``), and
  ``dG = Z^T v`` with ``|v_i| = 1/2``. Its first pass-0 handoff that passes this check (accepted
  or not, so a receiver that wrongly rejects it cannot shut it out) fixes the node's rows
  (:class:`RowsReference`), and every later contribution of that node must be one *those
  rows* can give: the same ``n``, ``dH <= Z^T Z / 4`` (Loewner order, as ``p (1 - p) <= 1/4``),
  and — since the pass-0 sums also fix ``Z^T 1`` and ``Z^T y`` — ``dG = Z^T p - Z^T y`` for
  some predictions ``p`` in [0, 1]: ``0 <= dG + Z^T y <= Z^T 1`` and ``(dG + Z^T y - Z^T 1 / 2)^T
  (Z^T Z)^+ (...) <= n / 4``. Every row's residual thus points to the label it had in pass 0. A
  node without a valid pass-0 handoff cannot contribute later.

Every bound has a rounding allowance. A scaled ("boosted") contribution breaks them, and so do
sums crafted to push the step where the node's rows carry no curvature and labels changed after
pass 0. What passes is what the node's rows could give with its pass-0 labels and *some*
predictions — which still lets a label flipper (flipped from pass 0) claim that every row is
confidently wrong, with no curvature (measured in benchmarks/results/chained_newton.md). (A state whose Newton step does not exist stands for its own ``w``, so a colluding receiver
that accepts one cannot stall the chain.)

**Privacy cost.** A node's ``G`` and ``H`` are aggregates of its rows, but consecutive states
differ by exactly one node's sums, so every receiver learns its predecessor's sums: ``H``'s
diagonal is a per-bin weighted row count, ``G`` per-bin residual sums (with the public ``w``,
label counts per bin). A node whose bin holds one row reveals that row's bin and label.

The state is float64 (``w``, ``G``, ``H``) and int64 (``count``, ``pass``): summing in float64 keeps a
pass's step equal to pooled Newton to ~1e-12, and the encoding is deterministic, so the same
rows and the same state give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

import numpy as np

from chainfl.errors import LearningError
from chainfl.learning.encoding import BinConfig, PLEncoder

#: Relative tolerance of a recomputed Newton step (LAPACK may round differently on other CPUs).
STEP_RTOL = 1e-9


@dataclass(frozen=True)
class NewtonConfig:
    """The encoder (agreed from the nodes' grid counts) and the L2 strength."""

    encoder: dict = field(default_factory=dict)   # PLEncoder.to_dict()
    l2: float = 1.0                               # lambda, on every weight but the bias
    max_bins: int = 16                            # bins per feature the encoder was cut with

    def __post_init__(self):
        if not self.encoder:
            raise LearningError("a newton model needs its encoder (NewtonConfig(encoder=PLEncoder(...).to_dict()))")
        enc = PLEncoder.from_dict(self.encoder)          # validated
        object.__setattr__(self, "encoder", enc.to_dict())
        object.__setattr__(self, "_ple", enc)             # parsed once (not a field)
        object.__setattr__(self, "l2", float(self.l2))
        object.__setattr__(self, "max_bins", int(self.max_bins))
        if not (math.isfinite(self.l2) and self.l2 > 0):
            raise LearningError(f"l2 must be a positive number, got {self.l2}")
        if enc.width < 1:
            raise LearningError("every feature is constant at grid resolution: nothing to encode")

    @property
    def ple(self) -> PLEncoder:
        return self._ple

    @property
    def n_features(self) -> int:
        return self.ple.n_features

    @property
    def width(self) -> int:
        """Weights: one per PLE component, plus the bias (last)."""
        return self.ple.width + 1

    def to_dict(self) -> dict:
        return {"encoder": self.encoder, "l2": self.l2, "max_bins": self.max_bins}

    @classmethod
    def from_dict(cls, d: Mapping) -> "NewtonConfig":
        d = dict(d)
        unknown = set(d) - {"encoder", "l2", "max_bins"}
        if unknown:
            raise LearningError(f"unknown newton settings: {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def from_counts(cls, counts: np.ndarray, n_features: int, bins: BinConfig, l2: float = 1.0) -> "NewtonConfig":
        return cls(PLEncoder.from_counts(counts, n_features, bins).to_dict(), l2, bins.max_bins)


# --- state -------------------------------------------------------------------------------------

def state_shapes(cfg: NewtonConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    D = cfg.width
    f8 = np.dtype(np.float64)
    i8 = np.dtype(np.int64)
    return {"w": ((D,), f8), "G": ((D,), f8), "H": ((D * (D + 1) // 2,), f8), "count": ((1,), i8), "pass": ((1,), i8)}


def init_state(cfg: NewtonConfig) -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, dtype) for name, (shape, dtype) in state_shapes(cfg).items()}


def _plain(cfg: NewtonConfig, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, (shape, dtype) in state_shapes(cfg).items():
        if name not in state:
            raise LearningError(f"newton state lacks {name!r}")
        a = np.asarray(state[name])
        if a.shape != shape:
            raise LearningError(f"newton state {name!r} has shape {a.shape}, expected {shape}")
        out[name] = a.astype(dtype, copy=False)
    return out


def design(cfg: NewtonConfig, X: np.ndarray) -> np.ndarray:
    """``Z = [PLE(X), 1]``, float64 ``[n, width]``, entries in [0, 1]."""
    Z = cfg.ple.transform(X).astype(np.float64)
    return np.concatenate([Z, np.ones((Z.shape[0], 1))], axis=1)


@lru_cache(maxsize=8)
def _triu(D: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the packed upper triangle (cached: every check and sum uses them)."""
    i, j = np.triu_indices(D)
    i.flags.writeable = j.flags.writeable = False
    return i, j


def unpack(cfg: NewtonConfig, packed: np.ndarray) -> np.ndarray:
    D = cfg.width
    i, j = _triu(D)
    M = np.zeros((D, D))
    M[i, j] = packed
    M[j, i] = packed
    return M


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))      # no overflow warnings


def newton_step(cfg: NewtonConfig, state: Mapping[str, np.ndarray]) -> np.ndarray:
    """``w - (H + lambda I')^{-1} (G + lambda I' w)`` of a state (its ``w`` if it holds no sums)."""
    s = _plain(cfg, state)
    w = s["w"]
    if int(s["count"][0]) == 0:
        return w.copy()
    reg = np.full(cfg.width, cfg.l2)
    reg[-1] = 0.0                                       # the bias is not regularised
    A = unpack(cfg, s["H"]) + np.diag(reg)
    b = s["G"] + reg * w
    try:
        L = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        raise LearningError("the summed Hessian is not positive definite (no rows, or sums that no data "
                            "can give); the state is invalid") from None
    delta = np.linalg.solve(L.T, np.linalg.solve(L, b))
    out = w - delta
    if not np.all(np.isfinite(out)):
        raise LearningError("the Newton step is not finite; the state is invalid")
    return out


def weights(cfg: NewtonConfig, state: Mapping[str, np.ndarray]) -> np.ndarray:
    """The weights the state stands for: the Newton step from its sums (the fitted model) — or,
    for sums no rows can give (whose step does not exist; a receiver never accepts such a state,
    but a colluding one might), its ``w`` unchanged, so every later node and report can go on."""
    try:
        return newton_step(cfg, state)
    except LearningError:
        return _plain(cfg, state)["w"].copy()


def pass_of(seq: int, n_nodes: int) -> int:
    """The pass handoff number ``seq`` (1-based, the chain's sequence number) belongs to."""
    return (int(seq) - 1) // int(n_nodes)


def _start_pass(cfg: NewtonConfig, s: dict, pass_index: int) -> dict:
    """``s`` as the first handoff of pass ``pass_index`` finds it: stepped and reset if it holds an
    earlier pass's sums, unchanged if it already belongs to this pass."""
    current = int(s["pass"][0])
    if pass_index < current:
        raise LearningError(f"handoff of pass {pass_index} on a state of the later pass {current}")
    if pass_index == current:
        return s
    return {"w": weights(cfg, s), "G": np.zeros_like(s["G"]), "H": np.zeros_like(s["H"]),
            "count": np.zeros(1, np.int64), "pass": np.array([pass_index], np.int64)}


def contribute(cfg: NewtonConfig, state: Mapping[str, np.ndarray], X: np.ndarray, y: np.ndarray,
               pass_index: int) -> dict[str, np.ndarray]:
    """The state a node hands on in pass ``pass_index`` (:func:`pass_of`): the Newton step of the
    pass before first if ``state`` holds its sums, then this node's sums added at ``w``."""
    s = _start_pass(cfg, {k: v.copy() for k, v in _plain(cfg, state).items()}, int(pass_index))
    g, h = sums(cfg, s["w"], X, y)
    s["G"] = s["G"] + g
    s["H"] = s["H"] + h
    s["count"] = s["count"] + 1
    return s


def pass_base(parent: Mapping[str, np.ndarray], child: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The sums ``G``, ``H`` that ``child``'s own contribution was added to: zeros when it is the
    first of its pass (``count == 1``), else ``parent``'s. ``child - base`` is the node's share."""
    first = int(np.asarray(child["count"])[0]) == 1
    return {k: np.zeros_like(np.asarray(child[k])) if first else np.asarray(parent[k], dtype=np.float64)
            for k in ("G", "H")}


def sums(cfg: NewtonConfig, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One node's ``(Z^T (p - y), packed Z^T diag(p (1 - p)) Z)`` at ``w``."""
    y = np.asarray(y, dtype=np.float64).ravel()
    if X.shape[0] != y.size:
        raise LearningError(f"{X.shape[0]} rows but {y.size} labels")
    D = cfg.width
    if X.shape[0] == 0:
        return np.zeros(D), np.zeros(D * (D + 1) // 2)
    Z = design(cfg, X)
    p = _sigmoid(Z @ w)
    g = Z.T @ (p - y)
    Hk = Z.T @ (Z * (p * (1.0 - p))[:, None])
    i, j = _triu(D)
    return g, Hk[i, j]


def predict_proba_at(cfg: NewtonConfig, w: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Probabilities at the weights ``w`` themselves (the point a pass evaluates at)."""
    return _sigmoid(design(cfg, X) @ np.asarray(w, dtype=np.float64))


def predict_margin(cfg: NewtonConfig, state: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    return design(cfg, X) @ weights(cfg, state)


def predict_proba(cfg: NewtonConfig, state: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    return _sigmoid(predict_margin(cfg, state, X))


def contributions(cfg: NewtonConfig, state: Mapping[str, np.ndarray], X: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-row, per-feature log-odds contributions ``[n, d]`` relative to the feature being 0,
    and the base (the margin of an all-zero row): a row's margin is the base plus its sum."""
    theta = weights(cfg, state)
    enc = cfg.ple

    def per_feature(Z: np.ndarray) -> np.ndarray:
        out = np.zeros((Z.shape[0], enc.n_features))
        pos = 0
        for j, e in enumerate(enc.edges):
            if not e:
                continue
            k = len(e) + 1
            out[:, j] = Z[:, pos:pos + k] @ theta[pos:pos + k]
            pos += k
        return out

    zero = per_feature(design(cfg, np.zeros((1, enc.n_features), dtype=np.float32)))
    return per_feature(design(cfg, X)) - zero, float(theta[-1] + zero.sum())


# --- the receiver's check ------------------------------------------------------------------------

def check_handoff(cfg: NewtonConfig, parent: Mapping[str, np.ndarray], child: Mapping[str, np.ndarray],
                  samples: int, pass_index: int, reference: "RowsReference | None" = None) -> str | None:
    """Why ``child`` is not a state one node with ``samples`` rows can make from ``parent`` in
    pass ``pass_index`` (None: it is). Beyond pass 0 the producer's :class:`RowsReference` (from
    its first valid pass-0 handoff, :func:`rows_reference`) is required. See the module docstring."""
    p, c = _plain(cfg, parent), _plain(cfg, child)
    n = int(samples)
    if n < 1:
        return f"claims {n} rows: a contribution needs at least one"
    if int(c["pass"][0]) != int(pass_index):
        return f"the state says pass {int(c['pass'][0])}, the handoff is in pass {int(pass_index)}"
    if int(p["pass"][0]) > int(pass_index):
        return f"the parent is of the later pass {int(p['pass'][0])}"
    count = int(p["count"][0])
    if int(p["pass"][0]) < int(pass_index):
        expected = weights(cfg, p)
        scale = 1.0 + float(np.max(np.abs(expected)))
        err = float(np.max(np.abs(c["w"] - expected)))
        if err > STEP_RTOL * scale:
            return (f"weights are not the Newton step of the completed pass (max deviation {err:.3g}, "
                    f"allowed {STEP_RTOL * scale:.3g})")
        base_G, base_H, want = np.zeros_like(p["G"]), np.zeros_like(p["H"]), 1
    else:
        if not np.array_equal(c["w"], p["w"]):
            return "weights changed mid-pass (only the node after a completed pass takes the Newton step)"
        if int(pass_index) == 0 and np.any(c["w"] != 0):
            return "pass 0 evaluates at w = 0 (the initial model); these weights are not zero"
        base_G, base_H, want = p["G"], p["H"], count + 1
    if int(c["count"][0]) != want:
        return f"count is {int(c['count'][0])}, expected {want}"
    D = cfg.width
    dG = c["G"] - base_G
    dH = c["H"] - base_H
    tol = 1e-9 * (1.0 + n + float(np.max(np.abs(base_H), initial=0.0)) + float(np.max(np.abs(base_G), initial=0.0)))
    i, j = _triu(D)
    diag_pos = np.flatnonzero(i == j)
    diag = dH[diag_pos]                                  # [D]
    hb = float(diag[-1])                                 # bias-bias: sum p (1 - p)
    bias_row = dH[np.flatnonzero(j == D - 1)]            # H[k, bias] for k = 0..D-1 (bias last)
    worst = float(np.max(np.abs(dG)))
    if worst > n + tol:
        return f"gradient sum {worst:.6g} exceeds the {n} rows claimed (|p - y| <= 1 per row): a scaled contribution"
    if hb > n / 4 + tol:
        return f"Hessian bias sum {hb:.6g} exceeds n/4 = {n / 4:.6g} for the {n} rows claimed: a scaled contribution"
    if np.any(diag < -tol) or np.any(bias_row < -tol):
        return "negative Hessian entries where every row adds p (1 - p) z >= 0"
    if np.any(diag > bias_row + tol) or np.any(bias_row > hb + tol):
        return "Hessian entries break 0 <= H_jj <= H_jb <= H_bb (encoded values lie in [0, 1])"
    off = np.abs(dH) - np.sqrt(np.maximum(diag[i], 0.0) * np.maximum(diag[j], 0.0))
    if float(np.max(off)) > tol:
        return "Hessian breaks Cauchy-Schwarz (|H_jk| <= sqrt(H_jj H_kk)): not a sum of p (1 - p) z z^T"
    try:
        if int(pass_index) == 0:
            vals, vecs = np.linalg.eigh(unpack(cfg, dH))
        else:
            vals = np.linalg.eigvalsh(unpack(cfg, dH))
    except np.linalg.LinAlgError as e:
        return f"the Hessian sums cannot be decomposed ({e})"
    if float(vals[0]) < -tol * D:
        return f"Hessian is not positive semi-definite (eigenvalue {float(vals[0]):.3g}): not a sum of p (1 - p) z z^T"
    if int(pass_index) == 0:
        # at w = 0 every row adds p (1 - p) = 1/4 and |p - y| = 1/2: H is a quarter of the rows' Gram
        # matrix Z^T Z, and G = Z^T v with |v_i| = 1/2, hence G^T (Z^T Z)^+ G <= n / 4
        if abs(hb - n / 4) > tol:
            return f"pass 0 (w = 0): the Hessian bias sum must be n/4 = {n / 4:.6g} exactly, got {hb:.6g}"
        if np.any(np.abs(dG) > 2 * bias_row + tol):
            return "pass 0 (w = 0): a gradient sum exceeds twice its Hessian bias entry (|p - y| = 1/2, p (1 - p) = 1/4)"
        problem = _residuals_fit(4.0 * vals, vecs, dG, n / 4, n, tol)    # |1/2 - y|^2 sums to n/4
        if problem:
            return f"pass 0 (w = 0): {problem}"
    else:
        if reference is None:
            return ("no valid pass-0 contribution of this node to check its sums against (a node's "
                    "pass-0 sums fix its rows' Gram matrix; without them its later sums are unbounded)")
        if n != reference.samples:
            return f"claims {n} rows, but its pass-0 contribution covered {reference.samples}: a node's rows are fixed"
        # p (1 - p) <= 1/4: H <= Z^T Z / 4 (Loewner order)
        try:
            slack = np.linalg.eigvalsh(reference.quarter_gram - unpack(cfg, dH))[0]
        except np.linalg.LinAlgError as e:
            return f"the Hessian sums cannot be compared with its rows' ({e})"
        if float(slack) < -tol * D:
            return (f"Hessian sums exceed what its rows can give (Z^T Z / 4 from its pass-0 sums; eigenvalue "
                    f"{float(slack):.3g}): a scaled contribution")
        problem = reference.predictions_explain(dG, tol)
        if problem:
            return problem
    return None


def _residuals_fit(gram_values: np.ndarray, gram_vectors: np.ndarray, dG: np.ndarray, limit: float,
                   rows: int, tol: float) -> str | None:
    """Why ``dG`` is not ``Z^T v`` for some ``|v|^2 <= limit`` (a necessary condition:
    ``dG^T (Z^T Z)^+ dG <= limit``), given ``Z^T Z``'s eigendecomposition (None: it can be)."""
    # directions the rows (numerically) do not span count with a floored eigenvalue: an honest
    # gradient has only rounding there, a crafted one pushing there is charged heavily
    floor = 1e-9 * max(float(gram_values[-1]), 1.0)
    coords = gram_vectors.T @ dG
    energy = float(np.sum(coords ** 2 / np.maximum(gram_values, floor)))
    if energy > limit * (1 + 1e-6) + tol:
        return (f"gradient sums need residuals beyond what its {rows} rows can have "
                f"(G^T (Z^T Z)^+ G = {energy:.4g} > {limit:.4g}): a scaled or fabricated contribution")
    return None


@dataclass(frozen=True)
class RowsReference:
    """What a node's pass-0 contribution fixes about its rows (at ``w = 0``: ``H_0 = Z^T Z / 4``,
    ``G_0 = Z^T (1/2 - y)``): their count, ``Z^T Z / 4`` (and the eigendecomposition of ``Z^T Z``),
    column sums ``S = Z^T 1`` and label sums ``Z^T y = S / 2 - G_0``. A later gradient of the same
    rows is ``G = Z^T p - Z^T y`` for predictions ``p`` in [0, 1], so ``m = G + Z^T y = Z^T p``
    must lie in the box ``0 <= m <= S`` (every ``z >= 0``) and ``(m - S/2)^T (Z^T Z)^+ (m - S/2)
    <= n / 4``: each row's residual points to *its pass-0 label*, whatever the node claims later."""

    samples: int
    quarter_gram: np.ndarray       # [D, D] Z^T Z / 4 (its pass-0 Hessian sums)
    gram_values: np.ndarray        # [D] eigenvalues of Z^T Z, ascending
    gram_vectors: np.ndarray       # [D, D] their eigenvectors (columns)
    column_sums: np.ndarray        # [D] Z^T 1
    label_sums: np.ndarray         # [D] Z^T y

    def predictions_explain(self, dG: np.ndarray, tol: float) -> str | None:
        """Why ``dG`` is not ``Z^T (p - y)`` for predictions ``p`` in [0, 1] on these rows with
        their pass-0 labels ``y`` (None: it can be)."""
        m = dG + self.label_sums                          # = Z^T p
        S = self.column_sums
        outside = np.maximum(-m, m - S)
        if float(np.max(outside)) > tol:
            j = int(np.argmax(outside))
            return (f"gradient sums no predictions on its rows can give with the labels its pass-0 sums fixed "
                    f"(weight {j}: Z^T p = {m[j]:.6g} outside [0, {S[j]:.6g}]): residuals against its own labels")
        return _residuals_fit(self.gram_values, self.gram_vectors, m - S / 2.0, self.samples / 4.0, self.samples, tol)


def rows_reference(cfg: NewtonConfig, parent: Mapping[str, np.ndarray], child: Mapping[str, np.ndarray],
                   samples: int) -> RowsReference:
    """The :class:`RowsReference` of a node from its pass-0 handoff ``parent -> child`` (the first
    one that passes :func:`check_handoff`, accepted or not)."""
    p, c = _plain(cfg, parent), _plain(cfg, child)
    if int(c["pass"][0]) != 0 or int(p["pass"][0]) != 0:
        raise LearningError("a rows reference comes from a pass-0 handoff")
    dH = unpack(cfg, c["H"] - p["H"])
    vals, vecs = np.linalg.eigh(dH)
    column_sums = 4.0 * dH[:, -1]                         # Z^T 1 (the bias column is all ones)
    return RowsReference(int(samples), dH, 4.0 * vals, vecs, column_sums, column_sums / 2.0 - (c["G"] - p["G"]))


def first_reference(cfg: NewtonConfig, pass0_handoffs, load) -> RowsReference | None:
    """A producer's :class:`RowsReference`: from the first of its pass-0 handoffs ``(parent,
    digest, samples)`` (in sequence order) that passes the pass-0 check, accepted or not — so a
    receiver that wrongly rejected it cannot shut its producer out of the later passes. ``load(d)``
    returns a state or None (blob not usable). The receivers and the audit share this rule."""
    for parent_digest, digest, samples in pass0_handoffs:
        parent, child = load(parent_digest), load(digest)
        if parent is None or child is None:
            continue
        try:
            if check_handoff(cfg, parent, child, int(samples), 0) is None:
                return rows_reference(cfg, parent, child, int(samples))
        except LearningError:
            continue
    return None


def pooled_newton(cfg: NewtonConfig, X: np.ndarray, y: np.ndarray, steps: int) -> np.ndarray:
    """The centralised baseline: ``steps`` Newton steps from 0 on all rows at once (the same
    objective; written independently of the chained path, which must equal it)."""
    Z = design(cfg, X)
    y = np.asarray(y, dtype=np.float64)
    reg = np.full(cfg.width, cfg.l2)
    reg[-1] = 0.0
    w = np.zeros(cfg.width)
    for _ in range(int(steps)):
        p = 1.0 / (1.0 + np.exp(-(Z @ w)))
        w = w - np.linalg.solve(Z.T @ (Z * (p * (1 - p))[:, None]) + np.diag(reg), Z.T @ (p - y) + reg * w)
    return w
