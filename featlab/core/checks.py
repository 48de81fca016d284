"""Settings checked before any heavy import: a typo in a path or a value fails in well under a second.

Torch-free on purpose: the CLI calls these first, then imports torch and loads a backbone.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from featlab.core.errors import FeatlabError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(device: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; anything else (``tpu``, ``meta``, ``mps``...) is refused."""
    if not _DEVICE.match(str(device)):
        raise FeatlabError(f"device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
    return device


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise FeatlabError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def finite_number(text: str | float, name: str) -> float:
    """A finite float, or one clear line (``nan`` and ``inf`` are refused: they mean no setting)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise FeatlabError(f"{name}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise FeatlabError(f"{name}: {text!r} is not a finite number")
    return value


def existing_path(path: str | os.PathLike, what: str = "image file or folder") -> Path:
    path = Path(path)
    if not path.exists():
        raise FeatlabError(f"{what} not found: {path}")
    return path


def existing_dir(path: str | os.PathLike, what: str = "dataset folder") -> Path:
    path = existing_path(path, what)
    if not path.is_dir():
        raise FeatlabError(f"{what} {path} is not a folder")
    return path


def check_ray(address: str | None) -> str | None:
    """``local``, ``auto`` or ``HOST:PORT`` / ``ray://HOST:PORT``."""
    if address is None or address in ("local", "auto"):
        return address
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise FeatlabError(f"--ray {address!r}: expected local, auto or a cluster address HOST:PORT")
    return address


def parse_pca(value: str | int | float | None) -> int | float | None:
    """``"256"`` -> 256 components, ``"0.95"`` -> keep 95 % of the variance, ``"0"`` -> no PCA."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise FeatlabError(f"pca takes a whole number of components, a variance fraction or 0, got {value!r}") from None
    if number == 0:
        return None
    if 0 < number < 1:
        return number
    if number >= 1 and number.is_integer():
        return int(number)
    raise FeatlabError(f"pca takes a whole number of components, a variance fraction in (0, 1) or 0, got {value!r}")


def parse_grid(value: str | float | None, name: str, allow_words: tuple[str, ...] = ()) -> list:
    """``"1"`` -> [1.0]; ``"0.1,1,10"`` -> [0.1, 1.0, 10.0]; words such as ``scale`` pass through."""
    if value is None:
        return []
    items = []
    for part in str(value).split(","):
        part = part.strip()
        if part in allow_words:
            items.append(part)
            continue
        number = finite_number(part, name)
        if number <= 0:
            raise FeatlabError(f"{name} values must be positive, got {part}")
        items.append(number)
    return items
