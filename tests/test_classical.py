"""The scikit-learn pipeline: construction, selection, PCA limits, solvers."""

from __future__ import annotations

import pytest
from sklearn.datasets import make_classification

from featlab.classical import build_pipeline, fit_svm, parse_grid, parse_pca
from featlab.errors import FeatlabError


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=300, n_features=40, n_informative=8, class_sep=1.5, random_state=0)
    return X[:200], y[:200], X[200:], y[200:]


def test_parse_pca_and_grid():
    assert parse_pca("256") == 256 and parse_pca("0.95") == 0.95 and parse_pca("0") is None
    with pytest.raises(FeatlabError):
        parse_pca("1.5")
    with pytest.raises(FeatlabError):
        parse_pca("abc")
    assert parse_grid("0.1,1,10", "C") == [0.1, 1.0, 10.0]
    assert parse_grid("scale,0.01", "gamma", allow_words=("scale",)) == ["scale", 0.01]
    with pytest.raises(FeatlabError, match="positive"):
        parse_grid("-1", "C")


def test_pipeline_shape():
    pipe = build_pipeline(pca=16)
    assert [name for name, _ in pipe.steps] == ["scale", "pca", "clf"]
    assert build_pipeline(pca=None).named_steps["pca"] == "passthrough"
    assert [n for n, _ in build_pipeline(solver="nystroem").steps] == ["scale", "pca", "kmap", "clf"]


def test_pca_larger_than_data_is_capped_and_said(data):
    X, y, Xv, yv = data
    result = fit_svm(X, y, Xv, yv, pca=256, n_jobs=1)
    assert result.pipeline.named_steps["pca"].n_components_ == min(len(X), X.shape[1])
    assert result.notes and "PCA 256 capped to" in result.notes[0]
    no_valid = fit_svm(X, y, pca=256, C=[0.1, 1.0], n_jobs=1)  # 5-fold CV fits PCA on 4/5 of train
    assert no_valid.pipeline.named_steps["pca"].n_components_ == min(len(X) * 4 // 5, X.shape[1])


def test_selection_on_valid_then_refit_on_train(data):
    X, y, Xv, yv = data
    result = fit_svm(X, y, Xv, yv, pca=10, C=[0.001, 1.0, 10.0], n_jobs=1)
    assert result.selection == "valid split"
    assert len(result.search) == 3
    # the choice is the candidate with the best valid balanced accuracy when fitted on train
    from sklearn.metrics import balanced_accuracy_score

    by_hand = {C: balanced_accuracy_score(yv, build_pipeline(pca=10, C=C).fit(X, y).predict(Xv)) for C in (0.001, 1.0, 10.0)}
    assert result.best_params["clf__C"] == max(by_hand, key=by_hand.get)
    assert result.selection_score == pytest.approx(max(by_hand.values()))
    assert result.pipeline.named_steps["pca"].n_components_ == 10
    # refit on train only: the support vectors come from the 200 training rows
    assert result.pipeline.named_steps["clf"].support_vectors_.shape[0] <= 200
    assert (result.pipeline.predict(Xv) == yv).mean() > 0.8


def test_cv_when_no_valid_and_variance_pca(data):
    X, y, _, _ = data
    result = fit_svm(X, y, pca=0.9, C=[0.5, 2.0], n_jobs=1)
    assert result.selection == "5-fold CV on train"
    assert 0 < result.pipeline.named_steps["pca"].n_components_ < 40


@pytest.mark.parametrize("solver", ["linear", "nystroem"])
def test_scalable_solvers_learn(data, solver):
    X, y, Xv, yv = data
    result = fit_svm(X, y, Xv, yv, pca=20, solver=solver, C=[0.1, 1.0], probability=True, n_jobs=1)
    proba = result.pipeline.predict_proba(Xv)[:, 1]
    assert ((proba >= 0.5) == yv).mean() > 0.75


def test_single_class_train_refused(data):
    X, y, _, _ = data
    with pytest.raises(FeatlabError, match="both real and fake"):
        fit_svm(X[y == 1], y[y == 1], pca=5)
