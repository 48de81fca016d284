"""`featlab benchmark` on the shipped real sample and on a tiny real build from ../shared/faces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featlab.cli import app
from featlab.core.metrics import group_metrics
from featlab.data.groups import find_groups, read_groups_csv
from tests.conftest import REAL_SAMPLE, SHARED

runner = CliRunner()
FACES = SHARED / "faces"


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_benchmark_on_the_shipped_sample_then_reuses_everything(tmp_path):
    work, out = tmp_path / "work", tmp_path / "bench"
    args = ["benchmark", "--data", REAL_SAMPLE, "--out", out, "--workdir", work, "--archs", "custom",
            "--epochs", "1", "--image-size", "64", "--recipes", "pool", "--no-progress"]
    first = invoke(*args)
    summary = json.loads((out / "benchmark.json").read_text())
    assert [m["family"] for m in summary["models"]] == ["svm", "cnn"]
    assert summary["data"]["counts"]["train"] == {"real": 50, "fake": 50}
    assert summary["data"]["synthetic"] is False
    assert len(summary["recipes"]) == 2 and summary["recipes"][-1]["default"] is True
    assert "valid" in summary["recipes"][0] and summary["settings"]["seed"] == 0
    assert summary["hardware"]["cores"] >= 1 and summary["versions"]["torch"]
    page = (out / "results.md").read_text()
    assert "## Feature recipes, compared on the valid split" in page and "## Test split: every model" in page
    assert "bench-cnn-custom" in page and "SYNTHETIC" not in page
    assert (out / "comparison.html").is_file() and list((out / "plots").glob("*-roc.png"))
    assert "computed in" in first.output

    # The candidate is compared on valid: no test image was read for it; the default read the test split alone.
    import featlab as fl
    from featlab.evaluation.evaluate import evaluate_model
    from featlab.features.cache import EmbeddingCache, dataset_tag

    workspace = fl.Workspace.resolve(work)
    candidate, default = summary["recipes"]
    caches = {c.meta["config"]["recipe"]["layers"][0]: c for c in map(EmbeddingCache, (work / "features").glob("*"))
              if (c.folder / "meta.json").is_file()}
    candidate_cache = caches["pool"]
    assert set(candidate_cache.index().split) == {"train", "valid"}
    default_cache = next(c for name, c in caches.items() if name != "pool")
    assert set(default_cache.index().split) == {"train", "valid", "test"}
    assert default_cache.meta["extract_shared_with"] == []  # its recorded rate is its own
    assert default["extract_images_per_s"] == default_cache.meta["extract_images_per_s"]
    # Evaluating the candidate on test later extracts that split and keeps the rest of its index.
    report, _ = evaluate_model(fl.load(candidate["model"], workspace), workspace, split="test", plots=False)
    assert report["data"]["n_images"] == summary["data"]["counts"]["test"]["real"] + \
        summary["data"]["counts"]["test"]["fake"]
    assert set(candidate_cache.index(dataset_tag(REAL_SAMPLE)).split) == {"train", "valid", "test"}

    again = invoke(*args)
    assert "160 computed" not in again.output and ": 0 computed" in again.output
    assert again.output.count("reusing the finished model") == 2 and "train-cnn custom: reused" in again.output
    meta = json.loads((work / "models" / "bench-cnn-custom" / "meta.json").read_text())
    assert meta["finished"] is True


def test_groups_csv_for_users_own_data(tmp_path):
    root = tmp_path / "data"
    (root / "test" / "fake").mkdir(parents=True)
    (root / "groups.csv").write_text("path,group\ntest/fake/a.jpg,generator=sd15\n/abs/b.jpg,generator=mj\n")
    groups = find_groups(root)
    assert groups[str((root / "test" / "fake" / "a.jpg").resolve())] == ["generator=sd15"]
    assert groups[str(Path("/abs/b.jpg").resolve())] == ["generator=mj"]
    (tmp_path / "bad.csv").write_text("file,kind\nx,y\n")
    with pytest.raises(Exception, match="needs the columns path,group"):
        read_groups_csv(tmp_path / "bad.csv", root)


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    """A combined build of a few real 140K and CIPLAB faces, through `featlab data build`."""
    if not (FACES / "140k").is_dir() or not (FACES / "ciplab").is_dir():
        pytest.skip(f"real faces not found at {FACES} (the shared data folder is absent on this machine)")
    base = tmp_path_factory.mktemp("tiny")
    src140 = FACES / "140k" / "real_vs_fake" / "real-vs-fake"
    for split, count in (("train", 12), ("valid", 6), ("test", 6)):
        for label in ("real", "fake"):
            target = base / "140k" / "real_vs_fake" / "real-vs-fake" / split / label
            target.mkdir(parents=True)
            for f in sorted((src140 / split / label).glob("*.jpg"))[:count]:
                shutil.copyfile(f, target / f.name)
    srccip = FACES / "ciplab" / "real_and_fake_face"
    for folder in ("training_real", "training_fake"):
        target = base / "ciplab" / "real_and_fake_face" / folder
        target.mkdir(parents=True)
        files = sorted((srccip / folder).glob("*.jpg"))
        picks = files[:20] if folder == "training_real" else [
            f for level in ("easy", "mid", "hard") for f in [g for g in files if g.name.startswith(level)][:7]]
        for f in picks:
            shutil.copyfile(f, target / f.name)
    invoke("data", "build", "--faces140k", base / "140k", "--ciplab", base / "ciplab", "--out", base / "build")
    return base / "build" / "combined-real-vs-fake"


def test_benchmark_on_a_tiny_real_build_breaks_metrics_down_by_source(tiny_build, tmp_path):
    out = tmp_path / "bench"
    invoke("benchmark", "--data", tiny_build, "--out", out, "--workdir", tmp_path / "work", "--archs", "",
           "--no-progress", "--C", "1")
    report = json.loads(Path(json.loads((out / "benchmark.json").read_text())["models"][0]["report"]).read_text())
    groups = {g["group"]: g for g in report["groups"]}
    assert {"source=140k", "source=ciplab"} <= set(groups)
    assert set(g for g in groups if g.startswith("difficulty=")) <= {"difficulty=easy", "difficulty=mid",
                                                                      "difficulty=hard"}
    assert groups["source=140k"]["n"] == 12 and groups["source=140k"]["n_fake"] == 6
    n_groups_images = groups["source=140k"]["n"] + groups["source=ciplab"]["n"]
    assert n_groups_images == report["data"]["n_images"]
    for name, g in groups.items():
        if name.startswith("difficulty="):
            assert g["n_real"] == 0 and "one-class group" in g["scored_against"]
    page = (out / "results.md").read_text()
    assert "| source=ciplab |" in page and "AUC source=140k" in page


def test_group_rows_recomputed_from_scores_match_the_report(tiny_build, tmp_path):
    """The report's per-source figures equal group_metrics on the same scores (no hidden filtering)."""
    from featlab.core.workspace import Workspace
    from featlab.evaluation.evaluate import evaluate_model, predict_paths

    work = tmp_path / "work"
    invoke("extract", "--data", tiny_build, "--workdir", work, "--no-progress")
    invoke("fit-svm", "--workdir", work, "--name", "svm", "--C", "1")
    report, _ = evaluate_model(work / "models" / "svm", Workspace.resolve(work), split="test")
    paths = sorted(str(p.resolve()) for p in (tiny_build / "test").rglob("*.jpg"))
    table = predict_paths(work / "models" / "svm", tiny_build / "test", Workspace.resolve(work))
    table = table.set_index("path").loc[paths]
    y = np.array([1 if "/fake/" in p else 0 for p in paths])
    from featlab.data.groups import groups_for

    expected = group_metrics(y, table.score.to_numpy(), 0.0, groups_for(paths, find_groups(tiny_build)))
    got = {g["group"]: g for g in report["groups"]}
    for row in expected:
        for key in ("n", "roc_auc", "average_precision", "accuracy"):
            assert got[row["group"]][key] == pytest.approx(row[key], abs=1e-6), (row["group"], key)
