"""Types shared by the backbone registry: preprocessing, registry entries, loaded backbones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

#: The weights source recorded for ``--weights none``: random initialisation, for tests only.
RANDOM_WEIGHTS = "none (random init, plumbing only)"

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class Preprocessing:
    """What a backbone's weights expect, split in two halves.

    :meth:`to_uint8` (resize + centre crop, on PIL) runs in the data-loading workers and
    yields a small uint8 tensor; :meth:`normalize` (channel order, mean/std, dtype) runs on
    the batch on the compute device. ``mean``/``std`` are in 0-255 pixel units, RGB order.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_mode: str = "shorter"  # "shorter": shorter side -> resize ; "square": both sides -> resize
    bgr: bool = False
    interpolation: str = "bilinear"

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 tensor (3, crop, crop)."""
        size = [self.resize] if self.resize_mode == "shorter" else [self.resize, self.resize]
        image = TF.resize(image, size, interpolation=InterpolationMode(self.interpolation), antialias=True)
        image = TF.center_crop(image, [self.crop, self.crop])
        return TF.pil_to_tensor(image)

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> normalised float batch in the model's channel order."""
        x = batch.to(torch.float32)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self.bgr:
            x = x.flip(1)
        return x.to(dtype)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry."""

    name: str
    embed_dim: int
    preprocessing: Preprocessing
    build: Callable[[], nn.Module]  # the full classifier, random init
    head: str | None  # attribute replaced by Identity to expose the pooled embedding
    weights: object | None = None  # torchvision WeightsEnum member for "default"
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class Backbone:
    """A ready-to-run embedding model and the facts every output must record."""

    spec: BackboneSpec
    model: nn.Module  # maps a normalised float batch to (N, embed_dim)
    weights: dict  # {"source": ..., "fingerprint": ..., "pretrained": bool, "file": ...}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing
