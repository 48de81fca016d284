"""Deterministic image perturbations for robustness tests (what happens to images on their way to users).

Applied right after decoding, before a model's own preprocessing, to real and fake images
alike, in this order: resize (down by a factor, then back up), Gaussian blur, Gaussian noise,
JPEG re-compression (last, as a platform would). Noise is seeded by the image's own pixels,
so the same image always gets the same perturbation, whichever model or run asks.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

from featlab.core.errors import FeatlabError

KINDS = ("jpeg", "blur", "resize", "noise")


@dataclass(frozen=True)
class Perturbation:
    """One perturbation setting (defaults: no change).

    Parameters
    ----------
    jpeg : JPEG quality 1-100 to re-compress with, or None.
    blur : Gaussian blur sigma in pixels (0 = none).
    resize : scale factor in (0, 1]: down-sample by it, then back to the original size.
    noise : standard deviation of Gaussian noise on 0-1 pixel values (0 = none).
    seed : mixed into the per-image noise seed.
    augment : training augmentation instead of a fixed setting: ``"jpeg"``, ``"blur"`` or
        ``"jpeg,blur"``, drawn per image as in CNNDetection (each with probability 0.5: blur sigma
        uniform in [0, 3], JPEG quality uniform in 30-100), seeded by the image's pixels and ``seed``.
    """

    jpeg: int | None = None
    blur: float = 0.0
    resize: float = 1.0
    noise: float = 0.0
    seed: int = 0
    augment: str = ""

    def __post_init__(self) -> None:
        if self.jpeg is not None and not 1 <= int(self.jpeg) <= 100:
            raise FeatlabError(f"jpeg quality must be 1-100, got {self.jpeg}")
        if not self.blur >= 0:
            raise FeatlabError(f"blur sigma must be >= 0 pixels, got {self.blur}")
        if not 0 < self.resize <= 1:
            raise FeatlabError(f"resize factor must be in (0, 1], got {self.resize}")
        if not 0 <= self.noise <= 1:
            raise FeatlabError(f"noise std must be in [0, 1] (0-1 pixel units), got {self.noise}")
        unknown = [a for a in self.augment.split(",") if a and a not in AUGMENTS]
        if unknown:
            raise FeatlabError(f"augment: unknown {', '.join(unknown)}; choose from {', '.join(AUGMENTS)}")

    @property
    def is_identity(self) -> bool:
        return self.jpeg is None and self.blur == 0 and self.resize == 1 and self.noise == 0 and not self.augment

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"random {self.augment} augmentation (p=0.5 each)"] if self.augment else []
        if self.resize != 1:
            parts.append(f"resize x{self.resize:g}")
        if self.blur:
            parts.append(f"blur sigma {self.blur:g}")
        if self.noise:
            parts.append(f"noise std {self.noise:g}")
        if self.jpeg is not None:
            parts.append(f"JPEG q{self.jpeg}")
        return ", ".join(parts) or "clean"

    def apply(self, image: Image.Image) -> Image.Image:
        """The perturbed RGB image (same size as the input)."""
        if self.is_identity:
            return image
        if self.augment:
            return self._augment(image)
        size = image.size
        if self.resize != 1:
            small = (max(1, round(size[0] * self.resize)), max(1, round(size[1] * self.resize)))
            image = image.resize(small, Image.Resampling.BILINEAR).resize(size, Image.Resampling.BILINEAR)
        if self.blur:
            image = image.filter(ImageFilter.GaussianBlur(self.blur))
        if self.noise:
            pixels = np.asarray(image, dtype=np.float32) / 255.0
            digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).digest()
            rng = np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])
            pixels = np.clip(pixels + rng.normal(0.0, self.noise, pixels.shape), 0.0, 1.0)
            image = Image.fromarray((pixels * 255.0 + 0.5).astype(np.uint8))
        if self.jpeg is not None:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=int(self.jpeg))
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        return image


    def _augment(self, image: Image.Image) -> Image.Image:
        digest = hashlib.sha256(image.tobytes()).digest()
        rng = np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])
        kinds = self.augment.split(",")
        blur = float(rng.uniform(0, 3)) if "blur" in kinds and rng.random() < 0.5 else 0.0
        jpeg = int(rng.integers(30, 101)) if "jpeg" in kinds and rng.random() < 0.5 else None
        return Perturbation(jpeg=jpeg, blur=blur, seed=self.seed).apply(image)


AUGMENTS = ("jpeg", "blur")


def parse_levels(kind: str, text: str, seed: int = 0) -> list[Perturbation]:
    """``("jpeg", "100,90,70")`` -> one Perturbation per level (``jpeg=100`` counts as clean-decoded q100)."""
    if kind not in KINDS:
        raise FeatlabError(f"unknown perturbation {kind!r}; choose from {', '.join(KINDS)}")
    levels = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise FeatlabError(f"{kind}: {part!r} is not a number") from None
        if kind == "jpeg":
            if not value.is_integer():
                raise FeatlabError(f"jpeg quality must be a whole number 1-100, got {part}")
            levels.append(Perturbation(jpeg=int(value), seed=seed))
        else:
            levels.append(Perturbation(**{kind: value}, seed=seed))
    if not levels:
        raise FeatlabError(f"{kind}: no levels given")
    return levels


def strength(perturbation: Perturbation, kind: str) -> float:
    """The x-axis value of a perturbation on its kind's curve."""
    value = getattr(perturbation, kind)
    return float("nan") if value is None else float(value)
