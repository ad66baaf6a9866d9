"""Peer validation: reporter-side gains, and a decision robust to a lying minority."""

import json

import numpy as np
import pytest

from chainfl.aggregation.peer import REPORT_FIELDS, PeerConfig, decide, robust_scores, score_candidates
from chainfl.errors import LearningError


def test_gains_by_hand():
    # rows: two negatives, two positives. base ranks one positive below a negative (AUC 3/4)
    y = np.array([0, 0, 1, 1])
    base = np.array([0.0, 1.0, 0.5, 2.0])
    better = np.array([0.0, 1.0, 1.5, 2.0])      # fixes the pair: AUC 1
    rep = score_candidates(y, base, np.stack([better, base]))
    assert rep.shape == (2, len(REPORT_FIELDS)) and rep.dtype == np.float32
    assert rep[0, 0] == pytest.approx(0.25) and rep[0, 1] == 1
    ll = lambda z, t: np.log1p(np.exp(z)) - t * z          # noqa: E731
    pos_gain = np.mean([ll(0.5, 1) - ll(1.5, 1), 0.0])
    assert rep[0, 2] == pytest.approx(pos_gain, rel=1e-6) and rep[0, 3] == 2
    assert rep[0, 4] == 0 and rep[0, 5] == 2                # negatives unchanged
    assert np.all(rep[1, [0, 2, 4]] == 0)                   # the global model itself gains nothing


def test_a_reporter_with_one_class_reports_no_auc():
    rep = score_candidates(np.array([0, 0, 0]), np.zeros(3), np.ones((1, 3)))
    assert rep[0, 1] == 0 and rep[0, 0] == 0 and rep[0, 3] == 0 and rep[0, 5] == 3
    assert rep[0, 4] < 0                                    # pushing negatives up costs loss


def test_score_candidates_rejects_bad_shapes_and_nan():
    with pytest.raises(LearningError):
        score_candidates(np.array([0, 1]), np.zeros(2), np.zeros((1, 3)))
    with pytest.raises(LearningError, match="finite"):
        score_candidates(np.array([0, 1]), np.zeros(2), np.array([[np.nan, 0.0]]))


def _reports(n_rep=20, n_cand=20, bad=(3, 7), liars=(), seed=0):
    """Honest reporters see candidate gains ~ +0.01 (bad ones -0.05), with noise; liars invert."""
    rng = np.random.default_rng(seed)
    R = np.zeros((n_rep, n_cand, len(REPORT_FIELDS)), np.float32)
    truth = np.where(np.isin(np.arange(n_cand), bad), -0.05, 0.01)
    R[..., 0] = truth[None, :] + rng.normal(0, 0.01, (n_rep, n_cand))
    R[..., 1] = 1
    R[..., 2] = R[..., 4] = R[..., 0]
    R[..., 3] = R[..., 5] = 10
    for i in liars:
        R[i, :, [0, 2, 4]] *= -1
    names = [f"n{k:02d}" for k in range(n_cand)]
    return R, names


@pytest.mark.parametrize("metric", ["auc", "loss", "auc+loss"])
def test_bad_candidates_are_excluded_honest_kept(metric):
    R, names = _reports()
    d = decide(R, names, names, PeerConfig(metric=metric))
    assert d.excluded == ["n03", "n07"]
    assert set(d.included) == set(names) - {"n03", "n07"}


def test_a_lying_minority_cannot_save_the_bad_or_frame_the_honest():
    # the bad candidates (3, 7) and four more nodes report inverted scores: 6 liars of 20
    R, names = _reports(liars=(3, 7, 10, 11, 12, 13))
    assert decide(R, names, names).excluded == ["n03", "n07"]
    # liars that instead report the worst possible scores for every honest candidate
    R, names = _reports()
    for i in (3, 7, 10, 11, 12, 13):
        R[i, :, 0] = np.where(np.isin(np.arange(20), (3, 7)), 1.0, -1.0)
    assert decide(R, names, names).excluded == ["n03", "n07"]


def test_a_reporters_row_about_itself_is_ignored():
    R, names = _reports()
    R[5, 5, 0] = -100.0                                     # n05 about itself
    base = robust_scores(_reports()[0], names, names, PeerConfig())
    assert robust_scores(R, names, names, PeerConfig())["n05"] == base["n05"]


def test_decision_is_order_independent_and_json_able():
    R, names = _reports(seed=3)
    d = decide(R, names, names)
    pr, pc = np.random.default_rng(1).permutation(20), np.random.default_rng(2).permutation(20)
    d2 = decide(R[pr][:, pc], [names[i] for i in pr], [names[j] for j in pc])
    assert (d.included, d.excluded) == (d2.included, d2.excluded)
    assert {k: v["score"] for k, v in d.scores.items()} == {k: v["score"] for k, v in d2.scores.items()}
    json.dumps(d.scores)
    cfg = PeerConfig(metric="loss", tolerance=2.0)
    assert PeerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_cap_and_missing_evidence():
    R, names = _reports(bad=tuple(range(12)))
    d = decide(R, names, names, PeerConfig(max_exclude_frac=0.25))
    assert len(d.excluded) == 5                             # floor(0.25 x 20)
    # no reporter holds both classes: no AUC evidence, nobody excluded by AUC
    R, names = _reports()
    R[..., 1] = 0
    assert decide(R, names, names, PeerConfig(metric="auc")).excluded == []


def test_decide_rejects_malformed_reports():
    R, names = _reports()
    with pytest.raises(LearningError, match="shape"):
        decide(R[:, :5], names, names)
    R[0, 0, 0] = np.nan
    with pytest.raises(LearningError, match="NaN"):
        decide(R, names, names)
    with pytest.raises(LearningError, match="duplicate"):
        decide(R, names[:-1] + names[:1], names)
