"""The Python API: scikit-learn estimators over images, the README example, the public names."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from typer.testing import CliRunner

import featlab
from featlab.cli import app
from featlab.features.extract import Extractor

from .conftest import REAL_SAMPLE, REPO

runner = CliRunner()


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```\s*<!-- /api-example -->", text, re.S)
    assert block, "README has no API example block"
    return block.group(1)


def test_readme_api_example_reproduces_the_cli(tmp_path, monkeypatch):
    (tmp_path / "data_prep").mkdir()
    os.symlink(REAL_SAMPLE, tmp_path / "data_prep" / "sample-faces")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    api_auc = namespace["roc_auc_score"](namespace["test"].label, namespace["detector"].decision_function(
        namespace["test"].path))
    work = tmp_path / "featlab-work"
    for args in (["extract", "--data", str(REAL_SAMPLE), "--no-progress"],
                 ["fit-svm", "--pca", "100", "--C", "1", "--name", "cli"]):
        result = runner.invoke(app, [*args, "--workdir", str(work)])
        assert result.exit_code == 0, result.output
    cli = json.loads((work / "reports" / "cli-test.json").read_text())
    assert abs(api_auc - cli["metrics"]["roc_auc"]) < 1e-6, (api_auc, cli["metrics"]["roc_auc"])


def test_grid_search_extracts_each_image_once(tmp_path, monkeypatch):
    data = featlab.scan_dataset(REAL_SAMPLE)
    data = data[data.split != "test"]
    seen = []
    original = Extractor.__call__

    def counting(self, batch):
        seen.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(Extractor, "__call__", counting)
    features = featlab.DeepFeatures(backbone="resnet18", weights="none", precision="fp32", cache_dir=tmp_path / "f")
    pipe = make_pipeline(features, StandardScaler(), PCA(random_state=0), SVC())
    search = GridSearchCV(pipe, {"pca__n_components": [4, 8, 16]}, cv=3, scoring="roc_auc", n_jobs=1)
    search.fit(data.path, data.label)
    assert sum(seen) == len(data), f"{sum(seen)} forward passes for {len(data)} images"
    assert search.best_params_["pca__n_components"] in (4, 8, 16)


def test_deep_features_follows_scikit_learn_conventions():
    est = featlab.DeepFeatures(backbone="resnet18", layers="layer2", pooling="gem", weights="none")
    assert est.get_params()["layers"] == "layer2" and not hasattr(est, "recipe_")  # nothing done in __init__
    copy = clone(est)
    assert copy.get_params() == est.get_params() and copy is not est
    copy.set_params(pooling="avg+std")
    assert copy.pooling == "avg+std" and est.pooling == "gem"
    with pytest.raises(NotFittedError):
        est.transform([REAL_SAMPLE / "test" / "real" / os.listdir(REAL_SAMPLE / "test" / "real")[0]])
    assert est.fit() is est and est.n_features_out_ == 128 and est.recipe_.pooling == "gem"
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (70, 90, 3), dtype=np.uint8) for _ in range(3)]
    out = est.transform(arrays)
    assert out.shape == (3, 128) and out.dtype == np.float32
    from PIL import Image

    np.testing.assert_allclose(est.transform([Image.fromarray(a) for a in arrays]), out, atol=1e-6)
    assert len(est.get_feature_names_out()) == 128
    with pytest.raises(ValueError, match="could not be read|cannot|not an image"):
        est.set_params(cache_dir=None).fit().transform([REAL_SAMPLE / "NOTICE.md"])


def test_library_errors_name_parameters_not_cli_flags():
    from featlab.core.errors import FeatlabError

    with pytest.raises(FeatlabError) as error:
        featlab.DeepFeatures(backbone="resnet18", layers="layer9").fit()
    assert "--" not in str(error.value) and "layers" in str(error.value)
    with pytest.raises(FeatlabError) as error:
        featlab.train_cnn(featlab.TrainConfig(arch="custom", lr=-1), REAL_SAMPLE, "/nonexistent")
    assert "--" not in str(error.value) and "lr must be positive" in str(error.value)


@pytest.mark.slow
def test_cnn_classifier_and_load_model(tmp_path):
    data = featlab.scan_dataset(REAL_SAMPLE)
    train, test = data[data.split == "train"], data[data.split == "test"]
    clf = featlab.CNNClassifier(arch="custom", epochs=2, image_size=32, work_dir=tmp_path / "cnn")
    assert clone(clf).get_params() == clf.get_params()
    assert clf.fit(train.path, train.label) is clf
    proba = clf.predict_proba(test.path)
    assert proba.shape == (30, 2) and np.allclose(proba.sum(axis=1), 1)
    assert set(clf.predict(test.path)) <= {0, 1}
    np.testing.assert_array_equal(clf.predict(test.path), (clf.decision_function(test.path) >= 0).astype(int))
    saved = featlab.load_model(clf.model_dir_)
    np.testing.assert_allclose(saved.decision_function(test.path), clf.decision_function(test.path), atol=1e-6)
    assert 0 <= saved.score(test.path, test.label) <= 1


def test_public_names_are_exported_and_documented():
    for name in featlab.__all__:
        value = getattr(featlab, name)
        if callable(value) and name not in ("FeatlabError",):
            assert (value.__doc__ or "").strip(), f"featlab.{name} has no docstring"


def test_api_reference_is_in_sync_with_the_docstrings(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_api", REPO / "docs" / "make_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (REPO / "docs" / "api.md").read_text() == module.render(), "docs/api.md is stale: run make docs"
