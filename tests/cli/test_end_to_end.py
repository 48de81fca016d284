"""extract -> fit-svm -> evaluate -> predict -> compare from the CLI, on SYNTHETIC data."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from featlab.cli import app
from featlab.core.errors import FeatlabError
from featlab.detectors.modelfile import read_model_meta
from featlab.detectors.svm import load_svm
from featlab.features.specs import RANDOM_WEIGHTS
from featlab.reports.report import SCHEMA, validate_report

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def fitted(synth_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    invoke("extract", "--data", synth_root, "--backbone", "resnet18", "--weights", "none", "--precision", "fp32",
           "--workdir", work, "--no-progress")
    out = invoke("fit-svm", "--pca", "16", "--C", "0.1,1", "--workdir", work, "--name", "svm-r18", "--jobs", "1")
    return work, out.output


def test_fit_svm_reports_on_test(fitted):
    work, output = fitted
    assert "by valid split" in output and "accuracy" in output
    report = json.loads((work / "reports" / "svm-r18-test.json").read_text())
    validate_report(report)
    assert report["schema"] == SCHEMA
    assert report["data"]["split"] == "test" and report["data"]["n_images"] == 12
    assert report["data"]["synthetic"] is True
    assert report["model"]["weights"] == RANDOM_WEIGHTS and report["model"]["pretrained"] is False
    assert report["model"]["params"]["pca"]["components"] == 16
    for name in ("roc", "pr", "confusion", "pca_scatter"):
        assert (work / "reports" / "svm-r18-test" / f"{name}.png").stat().st_size > 1000
    meta = read_model_meta(work / "models" / "svm-r18")
    assert meta["n_train"] == 32 and meta["n_valid"] == 12 and meta["seed"] == 0
    assert meta["versions"]["scikit-learn"] != "not installed"


def test_evaluate_and_predict(fitted, synth_root, tmp_path):
    work, _ = fitted
    out = invoke("evaluate", "svm-r18", "--split", "valid", "--workdir", work, "--no-plots")
    assert "split=valid n=12" in out.output
    target = tmp_path / "loose"
    shutil.copytree(synth_root / "test" / "fake", target / "a")
    (target / "a" / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    pred = invoke("predict", "latest", target, "--out", tmp_path / "p.csv", "--workdir", work)
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 7 and (table.status == "ok").sum() == 6
    assert set(table.label.dropna()) <= {"real", "fake"}
    assert "skipped:" in pred.output and "broken.jpg" in pred.output
    index = pd.read_csv(next((work / "features").glob("resnet18-*/index.csv")))
    assert not index.path.str.contains("loose").any(), "prediction must not change the dataset index"


def test_compare_table(fitted):
    work, _ = fitted
    out = invoke("compare", "--workdir", work)
    assert "| svm-r18 |" in out.output
    page = (work / "reports" / "comparison.html").read_text()
    assert page.count("data:image/png;base64") >= 2  # overlaid ROC/PR and the cost scatter
    assert "<table class='cm'>" in page and "SYNTHETIC" in page


def test_model_hash_mismatch_refused(fitted, tmp_path):
    work, _ = fitted
    copy = tmp_path / "tampered"
    shutil.copytree(work / "models" / "svm-r18", copy)
    with open(copy / "model.skops", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(FeatlabError, match="changed after it was saved"):
        load_svm(copy)
    result = runner.invoke(app, ["evaluate", str(copy), "--workdir", str(work)])
    assert result.exit_code == 1 and "refusing to load" in result.output


def test_wrong_backbone_model_refused(fitted, synth_root):
    work, _ = fitted
    invoke("extract", "--data", synth_root, "--backbone", "resnet34", "--weights", "none", "--precision", "fp32",
           "--workdir", work, "--no-progress")
    from featlab.features.cache import select_cache

    other = select_cache(work / "features", "resnet34")
    with pytest.raises(FeatlabError, match="fitted on features of resnet18.*differ in: backbone"):
        load_svm(work / "models" / "svm-r18", other)
    ambiguous = runner.invoke(app, ["fit-svm", "--workdir", str(work)])
    assert ambiguous.exit_code == 1 and "name the backbone" in ambiguous.output


def test_default_pca_on_a_small_train_set_is_capped_and_said(fitted):
    work, _ = fitted
    result = runner.invoke(app, ["fit-svm", "--backbone", "resnet18", "--workdir", str(work), "--name", "capped",
                                 "--jobs", "1"])
    assert result.exit_code == 0, result.output
    assert "PCA 256 capped to 32 components" in result.output
    assert read_model_meta(work / "models" / "capped")["pca"]["components"] == 32


def test_report_schema_rejects_broken_reports(fitted):
    work, _ = fitted
    report = json.loads((work / "reports" / "svm-r18-test.json").read_text())
    del report["metrics"]["eer"]
    with pytest.raises(FeatlabError, match="missing metrics.eer"):
        validate_report(report)
