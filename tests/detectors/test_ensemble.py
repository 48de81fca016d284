"""The ``ensemble`` kind: members scaled on valid, averaged; a model like any other, refused when a member changed."""

from __future__ import annotations

import json

import numpy as np
import pytest

import featlab
from featlab.data.dataset import scan_dataset
from tests.conftest import R18, cli_ok


@pytest.fixture(scope="module")
def members(synth_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("ens")
    cli_ok("extract", "--data", synth_root, *R18, "--workdir", work)
    cli_ok("fit-svm", "--pca", "8", "--C", "1", "--workdir", work, "--name", "svm")
    cli_ok("train-cnn", "--arch", "custom", "--data", synth_root, "--image-size", "32", "--epochs", "1",
           "--out", work / "models" / "cnn", "--workdir", work, "--no-progress")
    return work


def test_fit_evaluate_predict_an_ensemble_of_an_svm_and_a_cnn(members, synth_root):
    work = members
    result = cli_ok("fit-ensemble", "svm", "cnn", "--data", synth_root, "--name", "both", "--workdir", work)
    assert "member svm (svm): scale" in result.output and "report (test)" in result.output
    ensemble = featlab.load("both", work)
    assert (ensemble.kind, ensemble.score_kind, ensemble.threshold) == ("ensemble", "mean_z", 0.0)
    # the rule: mean of (score - threshold) / valid spread, recomputed from the members' own scores
    valid = scan_dataset(synth_root, check_images=False)
    valid = valid[valid.split == "valid"]
    svm, cnn = featlab.load("svm", work), featlab.load("cnn", work)
    spreads = [np.std(m.score_paths(valid).scores) for m in (svm, cnn)]
    assert [m["scale"] for m in ensemble.meta["members"]] == pytest.approx(spreads)
    test = scan_dataset(synth_root, check_images=False)
    test = test[test.split == "test"]
    expected = np.mean([(m.score_paths(test).scores - m.threshold) / s for m, s in zip((svm, cnn), spreads)], axis=0)
    np.testing.assert_allclose(ensemble.score_paths(test).scores, expected, rtol=1e-6, atol=1e-9)
    report = json.loads((work / "reports" / "both-test.json").read_text())
    assert report["model"]["kind"] == "ensemble" and report["model"]["backbone"] == "resnet18 + custom"
    predicted = cli_ok("predict", "both", synth_root / "test" / "fake", "--workdir", work)
    assert "classified" in predicted.output
    refused = featlab.SavedModel(work / "models" / "both", workdir=work)
    with pytest.raises(AttributeError, match="no probabilities"):
        refused.predict_proba([str(next((synth_root / "test" / "fake").iterdir()))])


def test_an_ensemble_whose_member_changed_is_refused_in_one_line(members, synth_root):
    from typer.testing import CliRunner

    from featlab.cli import app

    work = members
    cli_ok("fit-ensemble", "svm", "cnn", "--data", synth_root, "--name", "pair", "--workdir", work)
    cli_ok("fit-svm", "--pca", "8", "--C", "10", "--workdir", work, "--name", "svm", "--force")  # the member changes
    result = CliRunner().invoke(app, ["evaluate", str(work / "models" / "pair"), "--workdir", str(work)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("featlab: error: pair: member svm changed since")
    one = CliRunner().invoke(app, ["fit-ensemble", "svm", "--data", str(synth_root), "--workdir", str(work)])
    assert one.exit_code == 1 and "at least two models" in one.output


def test_crafted_ensemble_folders_are_refused_in_one_line(members, synth_root, tmp_path):
    import hashlib
    import shutil

    from featlab.core.errors import FeatlabError

    work = members
    cli_ok("fit-svm", "--pca", "8", "--C", "1", "--workdir", work, "--name", "svm2", "--force")
    cli_ok("fit-ensemble", "svm2", "cnn", "--data", synth_root, "--name", "crafted", "--workdir", work, "--force")
    original = work / "models" / "crafted"

    def variant(name, edit_meta=None, artifact_bytes=None):
        folder = tmp_path / name
        shutil.copytree(original, folder)
        meta = json.loads((folder / "meta.json").read_text())
        if artifact_bytes is not None:
            (folder / "ensemble.json").write_bytes(artifact_bytes)
            meta["sha256"] = hashlib.sha256(artifact_bytes).hexdigest()  # a consistent hash: the content is refused
        if edit_meta:
            edit_meta(meta)
        (folder / "meta.json").write_text(json.dumps(meta))
        return folder

    def rescale(meta):
        meta["members"][0]["scale"] *= 100

    def elsewhere(meta):
        meta["members"][0]["folder"] = str(tmp_path / "no-such-model")

    cases = {
        "not json": (variant("junk", artifact_bytes=b"\x00\xff not json"), "is not an ensemble file"),
        "edited scale": (variant("scaled", rescale), "differs from the copy sealed"),
        "member elsewhere": (variant("moved", elsewhere), "differs from the copy sealed"),
        "nested": (variant("deep", artifact_bytes=b"[" * 100000), "is not an ensemble file"),
    }
    for folder, message in cases.values():
        with pytest.raises(FeatlabError, match=message):
            featlab.load(folder, work)


def test_a_loaded_cnn_remembers_its_scores_by_content_and_perturbation(members, synth_root, monkeypatch):
    """Scoring a split again (an ensemble scoring its members) reuses the loaded network's scores; a perturbed image,
    an edited file and a model seeing another face stage are scored afresh."""
    from featlab.data.faces import FaceStage
    from featlab.data.perturb import Perturbation
    from featlab.detectors import cnn as cnn_module

    scored_paths = []
    original = cnn_module.score_images

    def counting(model, prep, paths, *args, **kwargs):
        scored_paths.extend(paths)
        return original(model, prep, paths, *args, **kwargs)

    monkeypatch.setattr(cnn_module, "score_images", counting)
    cnn = featlab.load("cnn", members)
    manifest = scan_dataset(synth_root, check_images=False)
    test = manifest[manifest.split == "test"]
    first = cnn.score_paths(test)
    assert len(scored_paths) == len(test)
    again = cnn.score_paths(test)
    np.testing.assert_array_equal(again.scores, first.scores)
    assert len(scored_paths) == len(test) and again.seconds == pytest.approx(first.seconds, rel=0.5)
    cnn.score_paths(test, perturbation=Perturbation(jpeg=50))
    assert len(scored_paths) == 2 * len(test)
    edited = test.copy()
    edited.loc[edited.index[0], "sha256"] = "0" * 64  # other content under the same path
    cnn.score_paths(edited)
    assert len(scored_paths) == 2 * len(test) + 1
    cnn.with_faces(FaceStage(size=32)).score_paths(test)
    assert len(scored_paths) == 3 * len(test) + 1
    fresh = featlab.load("cnn", members)  # the memory belongs to one loaded model
    np.testing.assert_array_equal(fresh.score_paths(test).scores, first.scores)
