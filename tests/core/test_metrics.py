"""Metric values against hand-computed ones on tiny fixed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from featlab.core.metrics import binary_metrics, equal_error_rate


def test_hand_computed_example():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    m = binary_metrics(y, s, threshold=0.5)
    # predictions [0, 0, 0, 1]: tn=2 fp=0 fn=1 tp=1
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]
    assert m["accuracy"] == 0.75
    assert m["precision"] == 1.0
    assert m["recall"] == 0.5
    assert m["f1"] == pytest.approx(2 / 3)
    # pairs (fake, real) ranked right: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4) -> 3/4
    assert m["roc_auc"] == pytest.approx(0.75)
    # ranking 0.8(F) 0.4(R) 0.35(F) 0.1(R): AP = 0.5*1 + 0.5*(2/3)
    assert m["average_precision"] == pytest.approx(0.5 + 1 / 3)
    # FNR = FPR = 0.5 at threshold 0.4
    assert m["eer"] == pytest.approx(0.5)
    assert m["per_class_accuracy"] == {"real": 1.0, "fake": 0.5}
    assert (m["n"], m["n_real"], m["n_fake"], m["threshold"]) == (4, 2, 2, 0.5)


def test_perfect_and_inverted_scores():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([-3.0, -2.0, -1.0, 1.0, 2.0])
    perfect = binary_metrics(y, s, 0.0)
    assert perfect["accuracy"] == perfect["roc_auc"] == 1.0 and perfect["eer"] == 0.0
    inverted = binary_metrics(y, -s, 0.0)
    assert inverted["roc_auc"] == 0.0 and inverted["eer"] == 1.0 and inverted["accuracy"] == 0.0


def test_eer_interpolates_between_roc_points():
    # 4 real, 4 fake; one real above two fakes
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.75, 0.6, 0.7, 0.8, 0.9])
    eer, thr = equal_error_rate(y, s)
    assert eer == pytest.approx(0.25)
    assert 0.6 <= thr <= 0.8


def test_single_class_gives_undefined_ranking_metrics():
    m = binary_metrics(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]), 0.5)
    assert m["roc_auc"] is None and m["eer"] is None and m["per_class_accuracy"]["real"] is None
    assert m["recall"] == pytest.approx(2 / 3)
    assert math.isnan(equal_error_rate(np.array([0, 0]), np.array([0.1, 0.2]))[0])


def test_group_metrics_against_hand_computed_values():
    from featlab.core.metrics import group_metrics

    # images:     r1    r2    f1    f2    r3    f3 (easy)  f4 (hard)
    y = np.array([0, 0, 1, 1, 0, 1, 1])
    s = np.array([0.1, 0.6, 0.7, 0.2, 0.3, 0.9, 0.4])
    groups = [["source=a"], ["source=a"], ["source=a"], ["source=a"], ["source=b"],
              ["source=b", "difficulty=easy"], ["source=b", "difficulty=hard"]]
    rows = {r["group"]: r for r in group_metrics(y, s, 0.5, groups)}
    assert list(rows) == ["difficulty=easy", "difficulty=hard", "source=a", "source=b"]
    a = rows["source=a"]
    # reals 0.1, 0.6; fakes 0.7, 0.2: pairs right (0.7>0.1), (0.7>0.6), (0.2>0.1); wrong (0.2<0.6) -> 3/4
    assert a["roc_auc"] == pytest.approx(0.75)
    # predictions at 0.5: r1 ok, r2 wrong, f1 ok, f2 wrong
    assert (a["accuracy"], a["real_accuracy"], a["fake_accuracy"]) == (0.5, 0.5, 0.5)
    assert (a["n"], a["n_real"], a["n_fake"]) == (4, 2, 2)
    b = rows["source=b"]
    assert b["roc_auc"] == pytest.approx(1.0) and b["accuracy"] == pytest.approx(2 / 3)
    hard = rows["difficulty=hard"]  # one fake (0.4) against all three reals (0.1, 0.6, 0.3): 2 of 3 pairs right
    assert hard["roc_auc"] == pytest.approx(2 / 3)
    assert hard["fake_accuracy"] == 0.0 and hard["eer"] is None and "all 3 real images" in hard["scored_against"]
    easy = rows["difficulty=easy"]  # 0.9 above every real
    assert easy["roc_auc"] == 1.0 and easy["average_precision"] == 1.0 and easy["accuracy"] == 1.0
    # ranking 0.6(R) 0.4(F) 0.3(R) 0.1(R) for the hard fake: AP = precision at its rank = 1/2
    assert hard["average_precision"] == pytest.approx(0.5)


def test_best_threshold_accuracy_and_one_class_sets():
    from featlab.core.metrics import best_threshold_accuracy

    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.9])
    # sorted: 0.9F 0.8F 0.6R 0.4R 0.35F 0.1R; cut after 0.8: 2 fakes + 3 reals below (0.4, 0.1, 0.6? no: 0.6 is
    # below the cut) -> reals below = 3, fakes above = 2 -> 5/6; no other cut does better.
    out = best_threshold_accuracy(y, s)
    assert out["best_threshold_accuracy_oracle"] == pytest.approx(5 / 6)
    assert out["best_threshold_oracle"] == pytest.approx(0.8)  # score >= 0.8 is fake
    ties = best_threshold_accuracy(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5]))
    assert ties["best_threshold_accuracy_oracle"] == 0.5  # a tie cannot be split
    fakes_only = binary_metrics(np.array([1, 1, 1]), np.array([0.2, -0.5, 1.0]), 0.0)
    assert fakes_only["roc_auc"] is None and fakes_only["eer"] is None
    assert fakes_only["fake_accuracy"] == pytest.approx(2 / 3) and fakes_only["real_accuracy"] is None
    assert "one class only (fake images)" in fakes_only["notes"][0]


def test_roc_auc_interval_is_seeded_brackets_the_auc_and_covers_the_truth():
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score

    from featlab.core.metrics import binary_metrics, roc_auc_interval

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(150), np.ones(150)].astype(int)
    s = np.round(rng.normal(size=300) + y, 1)  # rounded: ties, which count one half
    low, high = roc_auc_interval(y, s)
    assert roc_auc_interval(y, s) == [low, high] and low < roc_auc_score(y, s) < high
    assert binary_metrics(y, s, 0.5)["roc_auc_ci"] == [low, high]
    assert roc_auc_interval(y, np.where(y == 1, 2.0, 1.0)) == [1.0, 1.0]
    assert roc_auc_interval(np.ones(5), np.arange(5.0)) is None
    # coverage: simulated sets with a known AUC (normal scores shifted by d: AUC = Phi(d / sqrt 2))
    truth, hits = float(norm.cdf(1 / np.sqrt(2))), 0
    for trial in range(150):
        r = np.random.default_rng(100 + trial)
        yy = np.r_[np.zeros(60), np.ones(90)].astype(int)
        lo, hi = roc_auc_interval(yy, r.normal(size=150) + yy, resamples=400, seed=trial)
        hits += lo <= truth <= hi
    assert 0.88 <= hits / 150 <= 0.99, hits / 150


def test_stratified_resamples_keep_each_stratum_in_its_columns_and_resampled_aucs_match_sklearn():
    from sklearn.metrics import roc_auc_score

    from featlab.core.metrics import resampled_roc_auc, stratified_resamples

    rng = np.random.default_rng(1)
    strata = np.array(["a:0"] * 30 + ["a:1"] * 20 + ["b:0"] * 25 + ["b:1"] * 25)
    y = np.array([int(s[-1]) for s in strata])
    score = np.round(rng.normal(size=100) + y, 1)  # ties count one half, as in sklearn
    rows = stratified_resamples(strata, resamples=50, seed=3)
    assert rows.shape == (50, 100) and (stratified_resamples(strata, resamples=50, seed=3) == rows).all()
    assert (strata[rows] == strata).all()  # column j always draws from j's stratum
    assert len({tuple(r) for r in rows}) == 50  # with replacement, each resample differs
    aucs = resampled_roc_auc(y, score, rows)
    assert np.allclose(aucs, [roc_auc_score(y[r], score[r]) for r in rows])
    b = np.flatnonzero(np.char.startswith(strata, "b"))  # a subset of columns is the same subset in each resample
    assert np.allclose(resampled_roc_auc(y, score, rows[:, b]), [roc_auc_score(y[r[b]], score[r[b]]) for r in rows])
    with pytest.raises(ValueError, match="both classes"):
        resampled_roc_auc(y, score, rows[:, :30])
