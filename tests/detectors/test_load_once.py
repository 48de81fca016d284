"""One loaded model: a command opens a model folder's meta.json and its artifact exactly once.

Counted with a ``sys.addaudithook`` "open" hook (every Python-level open, numpy, skops and torch
included), on the CLI run in-process, for an SVM and a CNN; and ``SavedModel`` loads once however
often it predicts.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest

import featlab
from tests.conftest import cli_ok

_watch: dict[str, Counter] = {}  # realpath -> counter of the test running now (audit hooks cannot be removed)


def _hook(event: str, args) -> None:
    if event != "open" or not _watch or not args:
        return
    target = args[0]
    if isinstance(target, (str, bytes, os.PathLike)):
        try:
            path = os.path.realpath(os.fsdecode(target))
        except (TypeError, ValueError):
            return
        if path in _watch:
            _watch[path]["opens"] += 1


sys.addaudithook(_hook)


class Opens:
    """Count opens of a model folder's meta.json and artifact while the block runs."""

    def __init__(self, folder: Path) -> None:
        artifact = featlab.load(folder).meta["artifact"]
        self.paths = {"meta.json": os.path.realpath(folder / "meta.json"),
                      "artifact": os.path.realpath(folder / artifact)}

    def __enter__(self) -> Opens:
        self.counters = {name: Counter() for name in self.paths}
        for name, path in self.paths.items():
            _watch[path] = self.counters[name]
        return self

    def __exit__(self, *exc) -> None:
        _watch.clear()

    def counts(self) -> dict[str, int]:
        return {name: counter["opens"] for name, counter in self.counters.items()}


@pytest.fixture(scope="module")
def models(fitted, synth_root) -> Path:
    """The shared work folder with an SVM (``svm``) and a tiny CNN (``cnn``) on the synthetic set."""
    if not (fitted / "models" / "cnn" / "meta.json").is_file():
        cli_ok("train-cnn", "--arch", "custom", "--data", synth_root, "--image-size", "32", "--epochs", "1",
               "--out", fitted / "models" / "cnn", "--workdir", fitted, "--no-progress")
    return fitted


@pytest.mark.parametrize("family", ["svm", "cnn"])
def test_evaluate_and_predict_open_the_model_folder_once(models, synth_root, family):
    folder = models / "models" / family
    images = synth_root / "test" / "fake"
    with Opens(folder) as opens:
        cli_ok("evaluate", folder, "--no-plots", "--workdir", models)
    assert opens.counts() == {"meta.json": 1, "artifact": 1}
    with Opens(folder) as opens:
        cli_ok("predict", folder, images, "--workdir", models)
    assert opens.counts() == {"meta.json": 1, "artifact": 1}


def test_evaluate_with_a_gallery_still_loads_once(models):
    folder = models / "models" / "svm"
    with Opens(folder) as opens:
        cli_ok("evaluate", folder, "--no-plots", "--explain", "1", "--workdir", models)
    assert opens.counts() == {"meta.json": 1, "artifact": 1}


@pytest.mark.parametrize("family", ["svm", "cnn"])
def test_saved_model_loads_once_for_many_predictions(models, synth_root, family):
    folder = models / "models" / family
    paths = sorted(str(p) for p in (synth_root / "test").rglob("*.png"))[:4] or \
        sorted(str(p) for p in (synth_root / "test").rglob("*.jpg"))[:4]
    with Opens(folder) as opens:
        model = featlab.load_model(folder, workdir=models)
        first = model.predict(paths)
        second = model.predict(paths)
        model.decision_function(paths)
    assert opens.counts() == {"meta.json": 1, "artifact": 1}
    assert list(first) == list(second) and set(first) <= {0, 1}


def test_every_kind_has_one_loader_and_refuses_what_it_cannot_do(models, synth_root):
    from featlab.detectors.base import KINDS

    assert set(KINDS) == {"svm", "oneclass", "cnn", "ae", "ensemble"}
    svm, cnn = featlab.load(models / "models" / "svm"), featlab.load(models / "models" / "cnn")
    assert (svm.kind, svm.score_kind, svm.threshold) == ("svm", "decision", 0.0)
    assert (cnn.kind, cnn.score_kind, cnn.threshold) == ("cnn", "logit", 0.0)
    assert svm.describe()["name"] == "svm" and cnn.describe()["backbone"] == "custom"
    with pytest.raises(AttributeError, match="no probabilities"):
        featlab.SavedModel(models / "models" / "svm", workdir=models).predict_proba(
            [str(next((synth_root / "test").rglob("*.*")))])
