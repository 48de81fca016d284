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
