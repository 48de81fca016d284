"""Library versions and environment facts recorded in every output."""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata

_PACKAGES = ("featlab", "torch", "torchvision", "scikit-learn", "numpy", "pillow", "onnxruntime", "onnx2torch")


def library_versions() -> dict[str, str]:
    """Return installed versions of the packages whose behaviour shapes featlab's numbers."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def hardware() -> dict:
    """The machine numbers were measured on: CPU model, cores, torch threads, GPU if any."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "system": f"{platform.system()} {platform.machine()}"}
