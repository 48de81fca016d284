"""Registry: embedding sizes, exact preprocessing, weights loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featlab.core.errors import FeatlabError
from featlab.features.backbones import BACKBONES, load_backbone
from featlab.features.specs import RANDOM_WEIGHTS

TORCHVISION = [name for name, spec in BACKBONES.items() if spec.weights is not None]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_embedding_dim(name):
    backbone = load_backbone(name, weights="none")
    with torch.inference_mode():
        out = backbone.model(torch.randn(2, 3, 64, 64) if backbone.spec.weights is not None else torch.randn(2, 3, 224, 224))
    assert out.shape == (2, BACKBONES[name].embed_dim)
    assert backbone.weights["pretrained"] is False and backbone.weights["source"] == RANDOM_WEIGHTS


@pytest.mark.parametrize("name", TORCHVISION)
def test_preprocessing_matches_the_weights_transforms(name):
    spec = BACKBONES[name]
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (300, 410, 3), dtype=np.uint8))
    ours = spec.preprocessing.normalize(spec.preprocessing.to_uint8(image)[None])[0]
    reference = spec.weights.transforms()(image)
    assert ours.shape == reference.shape == (3, 224, 224)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_local_weights_file_loads_strictly(tmp_path):
    import torchvision

    torch.manual_seed(5)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, tmp_path / "wrapped.pth")
    x = torch.randn(1, 3, 64, 64)
    reference.fc = torch.nn.Identity()
    for file in ("r18.pth", "wrapped.pth"):
        backbone = load_backbone("resnet18", weights=str(tmp_path / file))
        assert len(backbone.weights["fingerprint"]) == 64
        with torch.inference_mode():
            torch.testing.assert_close(backbone.model(x), reference.eval()(x))


def test_wrong_weights_file_is_refused(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(FeatlabError, match="does not fit resnet18"):
        load_backbone("resnet18", weights=str(tmp_path / "r34.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(FeatlabError, match="cannot read .* as a torch state_dict"):
        load_backbone("resnet18", weights=str(tmp_path / "junk.pth"))
    with pytest.raises(FeatlabError, match="weights file not found"):
        load_backbone("resnet18", weights=str(tmp_path / "absent.pth"))
    with pytest.raises(FeatlabError, match="unknown backbone"):
        load_backbone("vgg11", weights="none")


def test_missing_default_weights_say_which_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    spec = BACKBONES["resnet18"]
    monkeypatch.setattr(type(spec.weights), "get_state_dict", lambda self, **kw: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(FeatlabError, match=r"not on disk at .*hub/checkpoints/resnet18-f37072fd\.pth"):
        load_backbone("resnet18", weights="default")
