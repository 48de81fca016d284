"""What every stage that runs a network shares: device, precision, and decoding images into batches.

Below the stages (extraction, CNN training, robustness), above only data/specs/perturb, so that
no stage imports a sibling stage for these helpers.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.data import Dataset

from featlab.core.checks import PRECISIONS, check_device, check_precision  # noqa: F401 - PRECISIONS re-exported
from featlab.core.errors import BadImageError, FeatlabError
from featlab.data.dataset import load_rgb
from featlab.data.perturb import Perturbation
from featlab.features.specs import Preprocessing

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ device and dtype


def resolve_device(device: str = "auto") -> torch.device:
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatlabError(f"device {device}: CUDA is not available on this machine")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels (AVX-512 BF16 / AMX), where bf16 is fast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    check_precision(precision)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise FeatlabError("precision fp16 is for CUDA; on the CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        # measured on a 2-core AMD EPYC (Zen 3): a ResNet-50 training step 9.0 s in bf16 vs 1.5 s in fp32
        log.warning("precision bf16: this CPU has no native bf16 (AVX-512 BF16 / AMX), so it is emulated and "
                    "several times slower than fp32; --precision auto picks the faster one")
    return precision


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ------------------------------------------------------------------------ dataset


class ImageTensors(Dataset):
    """Decode (+ optional perturbation) + resize/crop to uint8 in the workers; bad files yield a reason."""

    def __init__(self, paths: list[str], preprocessing: Preprocessing, perturbation: Perturbation | None = None) -> None:
        self.paths = paths
        self.preprocessing = preprocessing
        self.perturbation = perturbation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = load_rgb(self.paths[i])
            if self.perturbation is not None:
                image = self.perturbation.apply(image)
            return i, self.preprocessing.prepare(image), ""
        except BadImageError as error:
            crop = self.preprocessing.crop
            return i, torch.zeros((3, crop, crop), dtype=torch.uint8), str(error)


def collate_images(items):
    """Collate (index, uint8 tensor, reason) items into (indices, batch, reasons)."""
    indices = torch.tensor([i for i, _, _ in items])
    return indices, torch.stack([t for _, t, _ in items]), [r for _, _, r in items]


def default_workers(device: torch.device) -> int:
    """Decoding processes. On a small CPU the forward pass needs every core and decoding is a
    small share of the work, so decoding in-process measured fastest (see the benchmark)."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, cpus)
    return 0 if cpus <= 4 else min(4, cpus // 4)


# ------------------------------------------------------------ pixels -> score


class PixelDetector(nn.Module):
    """Float pixels (N, 3, H, W) in 0-255, already cut to the model's view -> score (N,), differentiable."""

    def __init__(self, prep: Preprocessing, networks: list[nn.Module], head: nn.Module | None = None,
                 flips: list[bool] | None = None) -> None:
        super().__init__()
        self.prep = prep
        self.networks = nn.ModuleList(networks)
        self.head = head
        self.flips = flips or [False] * len(networks)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.prep.normalize(pixels)
        parts = []
        for network, flip in zip(self.networks, self.flips):
            out = network(x).float()
            if flip:
                out = (out + network(x.flip(3)).float()) / 2
            parts.append(out)
        out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return (self.head(out) if self.head is not None else out).reshape(-1)
