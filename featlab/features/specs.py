"""Types shared by the backbone registry: preprocessing, registry entries, loaded backbones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from featlab.core.errors import FeatlabError
from featlab.data.faces import FaceStage

#: The weights source recorded for ``--weights none``: random initialisation, for tests only.
RANDOM_WEIGHTS = "none (random init, plumbing only)"

#: Image geometries a feature recipe can ask for. ``crop``: the weights' own resize + centre crop;
#: ``native``: centre crop of the image's own pixels, no resampling; ``full``: the whole image
#: resized to the crop size (nothing cut off).
VIEWS = ("crop", "native", "full")

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
    # "shorter": shorter side -> resize; "square": both sides -> resize; "none": keep the image's own
    # pixels (no resampling, which smooths away generator traces) and only crop; an image smaller than
    # the crop is scaled up just enough to fill it.
    resize_mode: str = "shorter"
    bgr: bool = False
    interpolation: str = "bilinear"
    #: Detect and align the main face first (``--faces detect``); None: the image is the model's input as it is.
    faces: FaceStage | None = None

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 tensor (3, crop, crop) of what the model sees: the aligned main face when the
        preprocessing has a face stage (an image without one raises BadImageError "no face"), then :meth:`to_uint8`."""
        if self.faces is not None:
            image = self.faces.main_face(image).crop
        return self.to_uint8(image)

    def with_faces(self, faces: FaceStage | None) -> Preprocessing:
        """The same preprocessing with another face stage (None: whole images)."""
        return replace(self, faces=faces)

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 tensor (3, crop, crop): the geometry only (a face stage is :meth:`prepare`'s)."""
        mode = InterpolationMode(self.interpolation)
        if self.resize_mode == "none":
            if min(image.size) < self.crop:
                image = TF.resize(image, [self.crop], interpolation=mode, antialias=True)
        else:
            size = [self.resize] if self.resize_mode == "shorter" else [self.resize, self.resize]
            image = TF.resize(image, size, interpolation=mode, antialias=True)
        image = TF.center_crop(image, [self.crop, self.crop])
        return TF.pil_to_tensor(image)

    def view_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The region of an image of ``size`` (w, h) that :meth:`to_uint8` keeps, in that image's pixels
        (x0, y0, x1, y1): where a map over the model's input lies on the original image."""
        w, h = size
        if self.resize_mode == "none":
            sx = sy = 1.0 if min(w, h) >= self.crop else self.crop / min(w, h)
        elif self.resize_mode == "shorter":
            sx = sy = self.resize / min(w, h)
        else:
            sx, sy = self.resize / w, self.resize / h
        new_w, new_h = round(w * sx), round(h * sy)
        left, top = int(round((new_w - self.crop) / 2.0)), int(round((new_h - self.crop) / 2.0))
        return left / sx, top / sy, (left + self.crop) / sx, (top + self.crop) / sy

    def with_view(self, view: str) -> Preprocessing:
        """The same normalisation with another geometry (see :data:`VIEWS`)."""
        if view not in VIEWS:
            raise FeatlabError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        if view == "crop":
            return self
        if view == "native":
            return replace(self, resize_mode="none")
        return replace(self, resize=self.crop, resize_mode="square")  # full: the whole image, squeezed to the crop

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
        recorded = asdict(self)
        if self.faces is None:
            del recorded["faces"]  # so whole-image caches and models keep the keys they had
        return recorded

    @classmethod
    def from_dict(cls, recorded: dict) -> Preprocessing:
        """The inverse of :meth:`as_dict`, for what a model folder or an export recorded (JSON lists -> tuples)."""
        return cls(**{**recorded, "mean": tuple(recorded["mean"]), "std": tuple(recorded["std"]),
                      "faces": FaceStage.from_dict(recorded.get("faces"))})


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
    #: Named feature maps a recipe can pool: name -> (submodule of the embedding model, channels).
    stages: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: The stages featlab's default recipe pools (None: the two middle ones of :attr:`stages`).
    default_layers: tuple[str, ...] | None = None
    #: Stages output token maps (N, 1 + patches, width) with a class token first (a ViT), not (N, C, H, W).
    tokens: bool = False
    #: The faster engine on a CPU, measured by ``make bench`` (torch bf16 vs onnxruntime fp32): what engine ``auto``
    #: picks there.
    cpu_engine: str = "torch"


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
