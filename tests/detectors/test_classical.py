"""The scikit-learn pipeline: construction, selection, PCA limits, solvers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification

from featlab.core.errors import FeatlabError
from featlab.detectors.classical import build_pipeline, fit_svm, parse_grid, parse_pca


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


def test_streaming_fit_reads_in_chunks_and_matches_an_in_memory_linear_svm():
    from sklearn.metrics import roc_auc_score
    from sklearn.svm import LinearSVC

    from featlab.detectors.detector import TorchPipeline
    from featlab.detectors.streaming import (
        bytes_per_row,
        chunk_rows,
        fit_streaming,
        fixed_bytes,
        transform_bytes_per_row,
    )

    rng = np.random.default_rng(0)
    n, d = 3000, 64
    shift = rng.normal(0, 0.25, d)
    X = rng.normal(0, 1, (n, d)).astype(np.float32)
    y = rng.integers(0, 2, n)
    X[y == 1] += shift
    Xv = rng.normal(0, 1, (600, d)).astype(np.float32)
    yv = rng.integers(0, 2, 600)
    Xv[yv == 1] += shift
    reads = []

    def read(idx):
        reads.append(len(idx))
        return X[idx]

    cap = fixed_bytes(d, 16, 200) + 300 * (bytes_per_row(d, 200) + transform_bytes_per_row(d, 200))  # 300 rows
    result = fit_streaming(read, y, d, lambda idx: Xv[idx], yv, pca=16, C=[0.01, 1.0], nystroem_components=200,
                           epochs=3, max_memory=cap, seed=0, footprint=0)
    assert max(reads) <= chunk_rows(d, cap, 17, 200, 16) == 300 or max(reads) == 2000  # chunks, Nystroem sample
    assert sorted(set(reads) - {2000}) == [300]
    assert result.selection == "valid split" and len(result.search) == 2
    streamed = roc_auc_score(yv, result.pipeline.decision_function(Xv))
    in_memory = roc_auc_score(yv, LinearSVC().fit(X, y).decision_function(Xv))
    assert streamed > in_memory - 0.03
    copy = TorchPipeline(result.pipeline)(torch.as_tensor(Xv)).detach().numpy()
    np.testing.assert_allclose(copy, result.pipeline.decision_function(Xv), atol=1e-4)
    # the one-pass PCA is the exact PCA of the standardised data (up to each component's sign)
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    exact = PCA(16).fit(StandardScaler().fit_transform(X))
    ours = result.pipeline.named_steps["pca"]
    np.testing.assert_allclose(ours.explained_variance_, exact.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(np.abs((ours.components_ * exact.components_).sum(1)), 1, atol=1e-4)


def test_fit_svm_max_memory_switches_to_the_streaming_fit(synth_root, tmp_path, monkeypatch):
    from featlab.detectors import streaming
    from tests.conftest import R18, cli_ok

    work = tmp_path / "work"
    cli_ok("extract", "--data", synth_root, *R18, "--layers", "pool", "--workdir", work)
    n_train = len(list((synth_root / "train").glob("*/*.*")))
    # this test process holds far more than a fit needs: count it as 0 so the cap sizes the chunks alone
    monkeypatch.setattr(streaming, "resident_bytes", lambda: 0)
    cap = streaming.fixed_bytes(512, 4, n_train) + 12 * (streaming.bytes_per_row(512, n_train)
                                                         + streaming.transform_bytes_per_row(512, n_train))
    result = cli_ok("fit-svm", "--pca", "4", "--C", "0.1,1", "--stream", "--max-memory", cap, "--workdir", work,
                    "--name", "streamed")
    assert "note: streaming fit: 3 chunks of up to 12 rows" in result.output
    meta = json.loads((work / "models" / "streamed" / "meta.json").read_text())
    assert meta["selection"] == "valid split" and meta["pca"]["components"] == 4
    cli_ok("evaluate", "streamed", "--no-plots", "--workdir", work)
    monkeypatch.undo()
    # a real ceiling below what the process already holds: one line that says what is needed
    from typer.testing import CliRunner

    from featlab.cli import app

    failed = CliRunner().invoke(app, ["fit-svm", "--pca", "4", "--stream", "--max-memory", "300KB",
                                     "--workdir", str(work)])
    assert failed.exit_code == 1 and failed.output.startswith("featlab: error: max memory 300 KB is too small")
    assert "too small: the process already holds" in failed.output and "give at least" in failed.output
