"""Source experts: one calibrated SVM per training source, mixed by a learned gate (featlab.detectors.experts)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import featlab
from data_prep.synth import make_synthetic_dataset
from featlab.core.errors import FeatlabError
from featlab.detectors.classical import fit_like, fit_svm, score_rule
from featlab.detectors.experts import SourceExperts, expert_sources
from featlab.detectors.svm import _load_skops, dumps_model
from featlab.detectors.torchcopy import TorchPipeline
from tests.cli.test_hardening import fails_cleanly, run
from tests.conftest import R18, cli_ok


def two_sources(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings of two sources told apart by feature 1, whose fakes lie on opposite sides of feature 0:
    what is fake in one source looks real in the other."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2 * n, 12))
    sources = np.array(["a"] * n + ["b"] * n, dtype=object)
    X[:, 1] += np.where(sources == "a", 4.0, -4.0)
    y = np.where(sources == "a", X[:, 0] > 0, X[:, 0] < 0).astype(np.int64)
    return X, y, sources


def test_each_expert_learns_its_own_source_and_the_gate_routes_to_it():
    X, y, sources = two_sources(150, seed=0)
    Xt, yt, st = two_sources(100, seed=1)
    model = SourceExperts(C=1.0, seed=0).fit(X, y, sources)
    assert model.sources_ == ["a", "b"]
    gate = model.gate_proba(Xt)
    assert np.mean(np.array(model.sources_, dtype=object)[gate.argmax(1)] == st) > 0.97
    experts = model.expert_proba(Xt)
    for k, name in enumerate(model.sources_):
        mine, other = st == name, st != name
        assert roc_auc_score(yt[mine], experts[mine, k]) > 0.95  # its own source
        assert roc_auc_score(yt[other], experts[other, k]) < 0.1  # the other source's rule is the reverse
    fake = model.predict_proba(Xt)[:, 1]
    assert np.allclose(fake, (gate * experts).sum(1))  # the mixture is the gate-weighted experts
    assert roc_auc_score(yt, fake) > 0.95
    assert set(model.predict(Xt)) <= {0, 1} and np.array_equal(model.predict(Xt), (fake >= 0.5).astype(int))


def test_fit_svm_with_sources_searches_the_experts_on_valid_and_copies_to_torch():
    X, y, sources = two_sources(120, seed=0)
    Xv, yv, _ = two_sources(40, seed=2)
    result = fit_svm(X, y, Xv, yv, pca=8, C=[0.1, 1.0, 10.0], sources=sources, n_jobs=1)
    clf = result.pipeline.named_steps["clf"]
    assert isinstance(clf, SourceExperts) and len(result.search) == 3 and result.selection == "valid split"
    assert clf.C == result.best_params["clf__C"]
    assert score_rule(result.pipeline) == (0.5, "p_fake")
    torch_copy = TorchPipeline(result.pipeline)
    assert torch_copy.calibrated
    features = torch.as_tensor(Xv, dtype=torch.float64).requires_grad_()
    got = torch_copy(features)
    assert np.abs(got.detach().numpy() - result.pipeline.predict_proba(Xv)[:, 1]).max() < 1e-6
    got.sum().backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    with pytest.raises(FeatlabError, match="no single decision value"):
        torch_copy.decision(features)


def test_the_smooth_svm_is_blended_half_and_half_and_lets_one_source_have_an_expert():
    X, y, sources = two_sources(150, seed=0)
    Xt, _, _ = two_sources(50, seed=1)
    model = SourceExperts(C=10.0, smooth_C=0.1, seed=0).fit(X, y, sources)
    mixture = (model.gate_proba(Xt) * model.expert_proba(Xt)).sum(1)
    smooth = model.smooth_.predict_proba(Xt)[:, 1]
    assert model.smooth_.calibrated_classifiers_[0].estimator.C == 0.1
    assert np.allclose(model.predict_proba(Xt)[:, 1], 0.5 * mixture + 0.5 * smooth)
    one = SourceExperts(smooth_C=0.1, smooth_weight=0.25).fit(X[:150], y[:150], sources[:150])  # source a only
    assert one.sources_ == ["a"] and one.gate_ is None and np.allclose(one.gate_proba(Xt), 1.0)
    assert np.allclose(one.predict_proba(Xt)[:, 1], 0.75 * one.expert_proba(Xt)[:, 0]
                       + 0.25 * one.smooth_.predict_proba(Xt)[:, 1])
    one.check_structure()
    with pytest.raises(FeatlabError, match="one source"):
        SourceExperts().fit(X[:150], y[:150], sources[:150])  # no smooth SVM: a gate needs two sources
    with pytest.raises(FeatlabError, match="smooth_weight"):
        SourceExperts(smooth_C=0.1, smooth_weight=2.0).fit(X, y, sources)


@pytest.mark.parametrize("n_sources", [1, 2])
def test_the_torch_copy_computes_the_blend_and_fit_like_refits_the_same_kind(n_sources):
    X, y, sources = two_sources(120, seed=0)
    Xv, yv, _ = two_sources(40, seed=2)
    rows = slice(None) if n_sources == 2 else slice(0, 120)
    pipeline = fit_svm(X[rows], y[rows], Xv, yv, pca=8, C=[1.0, 10.0], sources=sources[rows], smooth_C=0.1,
                       n_jobs=1).pipeline
    got = TorchPipeline(pipeline)(torch.as_tensor(Xv, dtype=torch.float64)).numpy()
    assert np.abs(got - pipeline.predict_proba(Xv)[:, 1]).max() < 1e-6
    refit = fit_like(pipeline, X[:120], y[:120], sources[:120])  # e.g. the cross-source check: source a alone
    clf = refit.named_steps["clf"]
    assert clf.sources_ == ["a"] and clf.C == pipeline.named_steps["clf"].C and clf.smooth_ is not None
    assert refit is not pipeline and pipeline.named_steps["clf"].sources_ == sorted(set(sources[rows]))
    with pytest.raises(FeatlabError, match="each training row's source"):
        fit_like(pipeline, X, y)


def test_a_crafted_single_expert_file_without_its_smooth_svm_is_refused(tmp_path):
    X, y, sources = two_sources(60, seed=0)
    pipeline = fit_svm(X[:60], y[:60], pca=4, sources=sources[:60], smooth_C=0.1, n_jobs=1).pipeline
    pipeline.named_steps["clf"].smooth_ = None  # one expert and nothing to blend: not what fit makes
    artifact = tmp_path / "model.skops"
    artifact.write_bytes(dumps_model(pipeline, "{}"))
    with pytest.raises(FeatlabError, match="experts, gate and sources do not match"):
        _load_skops(artifact)


@pytest.mark.parametrize("sources, labels, why", [
    (None, [0, 1], "no recorded source"),
    (["a"] * 60, [0, 1] * 30, "one source (a)"),
    (["a"] * 40 + [""] * 40, [0, 1] * 40, "40 training images have no recorded source"),
    (["a"] * 60 + ["b"] * 30, [0, 1] * 30 + [0] * 25 + [1] * 5, "source b has 25 real and 5 fake"),
])
def test_expert_sources_say_why_there_are_no_experts(sources, labels, why):
    names, reason = expert_sources(sources, np.array(labels))
    assert names == [] and why in reason


def test_expert_sources_of_a_pooled_training_set():
    names, reason = expert_sources(["x"] * 50 + ["w"] * 50, np.array([0, 1] * 50))
    assert names == ["w", "x"] and reason == ""
    assert expert_sources(["x"] * 50, np.array([0, 1] * 25), min_sources=1) == (["x"], "")


def test_a_crafted_experts_file_with_foreign_parts_is_refused(tmp_path):
    X, y, sources = two_sources(60, seed=0)
    pipeline = fit_svm(X, y, pca=4, sources=sources, n_jobs=1).pipeline
    clf = pipeline.named_steps["clf"]
    clf.experts_ = [LogisticRegression().fit(X, y) for _ in clf.experts_]  # allow-listed types, wrong places
    artifact = tmp_path / "model.skops"
    artifact.write_bytes(dumps_model(pipeline, "{}"))
    with pytest.raises(FeatlabError, match="experts, gate and sources do not match"):
        _load_skops(artifact)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """A SYNTHETIC dataset whose images are split between two recorded sources (groups.csv), extracted."""
    base = tmp_path_factory.mktemp("pooled")
    root = make_synthetic_dataset(base / "data", {"train": 48, "valid": 12, "test": 12}, size=32, seed=3)
    rows = ["path,group"] + [f"{p.relative_to(root)},source={'left' if i % 2 else 'right'}"
                             for i, p in enumerate(sorted(root.glob("*/*/*.jpg")))]
    (root / "groups.csv").write_text("\n".join(rows) + "\n")
    work = base / "work"
    cli_ok("extract", "--data", root, *R18, "--workdir", work)
    return root, work


def test_fit_svm_fits_source_experts_when_the_training_set_records_its_sources(pooled, tmp_path):
    root, work = pooled
    printed = cli_ok("fit-svm", "--pca", "8", "--workdir", work, "--name", "experts").output  # the default
    assert ("one calibrated SVM expert per training source (left 48, right 48), mixed by a gate, blended half and "
            "half with a smooth SVM (C 0.1)") in printed
    meta = json.loads((work / "models" / "experts" / "meta.json").read_text())
    assert meta["options"]["experts"] == "auto" and meta["options"]["smooth_C"] == 0.1
    detector = featlab.load("experts", work)
    assert (detector.threshold, detector.score_kind) == (0.5, "p_fake")
    cli_ok("predict", "experts", root / "test", "--out", tmp_path / "scores.csv", "--workdir", work)
    out = tmp_path / "experts.onnx"
    cli_ok("export", "experts", "--out", out, "--workdir", work)
    exported = featlab.load(out, work)
    x = torch.randint(0, 256, (4, 3, detector.prep.crop, detector.prep.crop), dtype=torch.uint8)
    assert np.abs(exported.score(x) - detector.score(x)).max() <= 1e-4
    single = cli_ok("fit-svm", "--pca", "8", "--experts", "none", "--workdir", work, "--name", "single").output
    assert "one SVM (experts none)" in single
    assert featlab.load("single", work).score_kind == "decision"


def test_experts_source_without_recorded_sources_is_one_clear_line(fitted):
    fails_cleanly(run("fit-svm", "--pca", "8", "--experts", "source", "--workdir", fitted, "--name", "nope"),
                  "--experts source: the training images have no recorded source")
    fails_cleanly(run("fit-svm", "--experts", "maybe", "--workdir", fitted), "experts must be one of auto, source, none")
    fails_cleanly(run("fit-svm", "--smooth-c", "-1", "--workdir", fitted), "smooth_C must be a number >= 0")


def test_an_experts_file_from_before_the_smooth_svm_still_loads_and_scores_its_mixture(tmp_path):
    X, y, sources = two_sources(60, seed=0)
    pipeline = fit_svm(X, y, pca=4, sources=sources, n_jobs=1).pipeline
    clf = pipeline.named_steps["clf"]
    for attribute in ("smooth_", "smooth_C", "smooth_weight"):  # what the earlier SourceExperts did not have
        delattr(clf, attribute)
    artifact = tmp_path / "model.skops"
    artifact.write_bytes(dumps_model(pipeline, "{}"))
    loaded, _ = _load_skops(artifact)
    reduced = pipeline[:-1].transform(X)
    mixture = (clf.gate_proba(reduced) * clf.expert_proba(reduced)).sum(1)
    assert np.allclose(loaded.predict_proba(X)[:, 1], mixture)
    assert np.abs(TorchPipeline(loaded)(torch.as_tensor(X, dtype=torch.float64)).numpy() - mixture).max() < 1e-6


def test_a_training_set_without_recorded_sources_is_one_source_with_its_smooth_svm(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", {"train": 20, "valid": 6, "test": 4}, size=32, seed=5)
    work = tmp_path / "work"
    cli_ok("extract", "--data", root, *R18, "--workdir", work)
    printed = cli_ok("fit-svm", "--pca", "8", "--workdir", work, "--name", "default").output
    assert ("one calibrated SVM expert for the one training source (unrecorded 40), blended half and half with a "
            "smooth SVM (C 0.1)") in printed
    clf = featlab.load("default", work).pipeline.named_steps["clf"]
    assert isinstance(clf, SourceExperts) and clf.sources_ == ["unrecorded"] and clf.gate_ is None
    plain = cli_ok("fit-svm", "--pca", "8", "--smooth-c", "0", "--workdir", work, "--name", "plain").output
    assert "one SVM: the training images have no recorded source" in plain  # no smooth SVM: nothing to blend
