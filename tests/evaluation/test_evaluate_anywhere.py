"""Any model on any data: other datasets, one-class sets, the cross-dataset matrix, robustness sweeps."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from featlab.cli import app
from featlab.data.perturb import Perturbation, parse_levels
from tests.cli.test_hardening import fails_cleanly
from tests.conftest import REAL_SAMPLE, train_svm_and_cnn
from tests.conftest import cli_ok as ok

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """An SVM fitted on the SYNTHETIC set and a CNN fitted on it, in one work folder."""
    return train_svm_and_cnn(tmp_path_factory.mktemp("work"), synth_root, "svm", "1")


def test_svm_on_another_dataset_leaves_its_training_index_alone(trained, synth_root):
    work = trained
    index_file = next((work / "features").glob("resnet18-*/index.csv"))
    before_index = index_file.read_bytes()
    before = json.loads(ok("evaluate", "svm", "--workdir", work, "--no-plots") and
                        (work / "reports" / "svm-test.json").read_text())
    other = ok("evaluate", "svm", "--data", REAL_SAMPLE, "--workdir", work, "--no-plots")
    assert "sample-faces" in other.output and "n=30" in other.output
    assert index_file.read_bytes() == before_index, "evaluating elsewhere must not touch the training index"
    ok("evaluate", "svm", "--workdir", work, "--no-plots")
    after = json.loads((work / "reports" / "svm-test.json").read_text())
    assert after["metrics"] == before["metrics"] and after["data"]["split_fingerprint"] == before["data"]["split_fingerprint"]
    again = ok("evaluate", "svm", "--data", REAL_SAMPLE, "--workdir", work, "--no-plots")
    assert again.output.split("report:")[0] == other.output.split("report:")[0]  # same numbers, from the cache


def test_a_folder_of_fakes_only_is_scored_by_recall(trained, tmp_path):
    fakes = tmp_path / "fakes"
    shutil.copytree(REAL_SAMPLE / "test" / "fake", fakes / "fake")
    for model in ("svm", "cnn"):
        result = ok("evaluate", model, "--data", fakes, "--workdir", trained, "--no-plots")
        assert "roc_auc  n/a" in result.output and "one class only (fake images)" in result.output
        report = json.loads(next((trained / "reports").glob(f"{model}-on-fakes-*-all.json")).read_text())
        assert report["metrics"]["roc_auc"] is None and report["data"]["n_images"] == 15
        assert report["metrics"]["fake_accuracy"] == report["metrics"]["recall"]


def test_matrix_cells_equal_separate_evaluate_runs(trained, synth_root):
    out = trained / "matrix-test"
    result = ok("evaluate", "svm", "cnn", "--data", synth_root, "--data", REAL_SAMPLE, "--workdir", trained,
                "--out", out)
    assert "| svm (trained on data) |" in result.output
    for suffix in ("md", "html", "png"):
        assert (out / f"matrix.{suffix}").stat().st_size > 200
    for model in ("svm", "cnn"):
        for root, tag in ((synth_root, None), (REAL_SAMPLE, "sample-faces")):
            args = ["evaluate", model, "--data", root, "--workdir", trained, "--no-plots"]
            single = ok(*args)
            auc = [line for line in single.output.splitlines() if line.startswith("roc_auc")][0].split()[1]
            row = f"| {model} (trained on data) |"
            line = next(line for line in result.output.splitlines() if line.startswith(row))
            cells = [c.strip() for c in line.split("|")[2:-1]]
            cell = cells[0 if tag is None else 1]
            assert cell.split(" / ")[0] == f"{float(auc):.3f}", (model, root, cell, auc)


def test_perturbations_are_deterministic_and_label_blind():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    p = Perturbation(jpeg=50, blur=1.0, resize=0.5, noise=0.05, seed=3)
    a, b = np.asarray(p.apply(image)), np.asarray(p.apply(image.copy()))
    assert a.shape == (64, 80, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(image))
    assert not np.array_equal(a, np.asarray(Perturbation(jpeg=50, blur=1.0, resize=0.5, noise=0.05, seed=4).apply(image)))
    assert np.array_equal(np.asarray(Perturbation().apply(image)), np.asarray(image))


@pytest.mark.parametrize("kind,text,match", [
    ("jpeg", "0", "jpeg quality must be 1-100"), ("jpeg", "101", "jpeg quality must be 1-100"),
    ("blur", "-1", "blur sigma must be >= 0"), ("resize", "1.5", "resize factor must be in (0, 1]"),
    ("noise", "abc", "is not a number"), ("sharpen", "1", "unknown perturbation"),
])
def test_bad_perturbation_values(kind, text, match):
    from featlab.core.errors import FeatlabError

    with pytest.raises(FeatlabError, match=match.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_levels(kind, text)


def test_cache_keys_separate_perturbations():
    from featlab.features.backbones import load_backbone
    from featlab.features.cache import cache_key
    from featlab.features.extract import Extractor

    backbone = load_backbone("resnet18", "none")
    keys = {cache_key(Extractor(backbone, precision="fp32", perturbation=p).config) for p in
            [None, Perturbation(jpeg=90), Perturbation(jpeg=70), Perturbation(blur=1), Perturbation(resize=0.5),
             Perturbation(noise=0.01), Perturbation(noise=0.01, seed=1)]}
    assert len(keys) == 7
    clean = cache_key(Extractor(backbone, precision="fp32", perturbation=Perturbation()).config)
    assert clean == cache_key(Extractor(backbone, precision="fp32").config), "no perturbation keeps the clean key"


def test_robustness_for_an_svm_and_a_cnn_with_cached_reruns(trained, synth_root, tmp_path):
    out = tmp_path / "rob"
    args = ["robustness", "svm", "cnn", "--data", synth_root, "--jpeg", "100,50", "--blur", "0,2", "--workdir",
            trained, "--out", out]
    first = ok(*args)
    assert "## JPEG quality" in first.output and "## Gaussian blur sigma (px)" in first.output
    table = pd.DataFrame(json.loads((out / "robustness.json").read_text())["rows"])
    assert len(table) == 2 * 4 and set(table.family) == {"svm", "cnn"}
    assert (out / "robustness-jpeg.png").stat().st_size > 1000 and (out / "robustness-blur.png").is_file()
    caches_before = sorted(p.name for p in (trained / "features").iterdir())
    ok(*args)
    again = pd.DataFrame(json.loads((out / "robustness.json").read_text())["rows"])
    pd.testing.assert_frame_equal(table, again)
    assert sorted(p.name for p in (trained / "features").iterdir()) == caches_before
    clean_svm = table[(table.model == "svm") & (table.kind == "blur") & (table.strength == 0)].iloc[0]
    report = json.loads((trained / "reports" / "svm-test.json").read_text())
    assert clean_svm.roc_auc == pytest.approx(report["metrics"]["roc_auc"], abs=1e-9), "blur 0 = clean test split"


def test_robustness_bad_input_writes_nothing(trained, synth_root, tmp_path):
    out = tmp_path / "rob"
    result = runner.invoke(app, ["robustness", "svm", "--data", str(synth_root), "--jpeg", "0,50",
                                 "--workdir", str(trained), "--out", str(out)])
    fails_cleanly(result, "jpeg quality must be 1-100")
    result = runner.invoke(app, ["robustness", "svm", "--data", str(synth_root), "--blur", "-2",
                                 "--workdir", str(trained), "--out", str(out)])
    fails_cleanly(result, "blur sigma must be >= 0")
    usage = runner.invoke(app, ["robustness", "svm", "--data", str(synth_root), "--sharpen", "2",
                                "--workdir", str(trained)])
    assert usage.exit_code == 2
    assert not out.exists()


def test_fit_svm_on_augmented_copies_extracts_them_once(trained):
    from featlab.features.cache import find_caches

    first = ok("fit-svm", "--pca", "8", "--C", "1", "--augment", "jpeg,blur", "--workdir", trained, "--name", "aug")
    meta = json.loads((trained / "models" / "aug" / "meta.json").read_text())
    assert meta["n_train_augmented"] == meta["n_train"] == 32 and meta["options"]["augment"] == "jpeg,blur"
    augmented = [c for c in find_caches(trained / "features")
                 if (c.meta["config"].get("perturbation") or {}).get("augment")]
    assert len(augmented) == 1 and augmented[0].meta["config"]["perturbation"]["augment"] == "jpeg,blur"
    rows = len(augmented[0])
    ok("fit-svm", "--pca", "8", "--C", "1", "--augment", "jpeg,blur", "--workdir", trained, "--name", "aug2")
    assert len(augmented[0].__class__(augmented[0].folder)) == rows, "augmented embeddings are reused"
    assert "roc_auc" in first.output
    bad = runner.invoke(app, ["fit-svm", "--augment", "sharpen", "--workdir", str(trained)])
    fails_cleanly(bad, "augment: unknown sharpen")


def test_augmentation_draws_are_per_image_and_deterministic():
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)) for _ in range(12)]
    p = Perturbation(augment="jpeg,blur", seed=0)
    once = [np.asarray(p.apply(im)) for im in images]
    twice = [np.asarray(p.apply(im)) for im in images]
    assert all(np.array_equal(a, b) for a, b in zip(once, twice))
    changed = sum(not np.array_equal(a, np.asarray(im)) for a, im in zip(once, images))
    assert 3 <= changed <= 12, "each image draws its own augmentation (about 3 in 4 are changed)"


def test_fit_svm_trains_on_the_dataset_it_is_told(synth_root, tmp_path):
    """A cache holding two datasets: fit-svm says which one it trains on, and --data picks it."""
    from data_prep.synth import make_synthetic_dataset
    from tests.conftest import R18

    other = make_synthetic_dataset(tmp_path / "other", {"train": 10, "valid": 4, "test": 4}, size=64, seed=3)
    work = tmp_path / "work"
    ok("extract", "--data", synth_root, *R18, "--layers", "pool", "--workdir", work)
    ok("extract", "--data", other, *R18, "--layers", "pool", "--workdir", work)
    latest = ok("fit-svm", "--pca", "4", "--C", "1", "--workdir", work, "--name", "latest-data").output
    assert f"note: training on {other.resolve()} (the dataset extracted last" in latest and "--data" in latest
    picked = ok("fit-svm", "--pca", "4", "--C", "1", "--data", synth_root, "--workdir", work, "--name", "picked")
    assert f"note: training on {synth_root.resolve()}\n" in picked.output
    metas = {name: json.loads((work / "models" / name / "meta.json").read_text()) for name in ("latest-data", "picked")}
    assert metas["picked"]["data_root"] == str(synth_root.resolve()) and metas["picked"]["n_train"] == 32
    assert metas["latest-data"]["data_root"] == str(other.resolve()) and metas["latest-data"]["n_train"] == 20
    report = json.loads((work / "reports" / "picked-test.json").read_text())
    assert report["data"]["n_images"] == 12  # the picked dataset's test split, not the other's 8
    fails_cleanly(runner.invoke(app, ["fit-svm", "--pca", "4", "--data", str(tmp_path / "never-extracted"),
                                      "--workdir", str(work)]), "holds no features of")
