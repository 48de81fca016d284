"""Small file helpers: content hashing, atomic writes (temp file + rename), strict JSON, safe torch loads."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from featlab.core.errors import FeatlabError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write a file so that readers see either the old file or the complete new one.

    ``write`` receives an open handle on a temporary file in the same folder; the
    file is flushed, fsynced and renamed over ``path`` only when ``write`` returns.
    A process killed at any moment leaves at most a stray ``.tmp`` file behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a shared work folder must stay readable
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    """The process umask (read by setting and restoring it: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text), mode="w")


def strict_json(value: Any) -> Any:
    """``value`` with every NaN / infinity replaced by ``None``: featlab writes strict JSON (RFC 8259 has no
    NaN), and a metric that is not defined on the data (ROC-AUC on one class, a search that did not run)
    reads back as null. numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps_strict(payload: Any, **options) -> str:
    return json.dumps(strict_json(payload), allow_nan=False, default=str, **options)


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    return atomic_write_text(path, dumps_strict(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_tensor_file(path: str | os.PathLike, what: str = "a torch checkpoint", map_location="cpu",
                     data: bytes | None = None):
    """``torch.load(weights_only=True)``: tensors and plain data only, never code. A file holding anything else
    (a pickled object, a payload) or not a torch file at all is refused in one line. ``data``: the file's bytes,
    already read (and hash-checked) by the caller; ``path`` then only names it in messages."""
    import io
    import pickle

    import torch

    try:
        return torch.load(io.BytesIO(data) if data is not None else path, map_location=map_location,
                          weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:160]
        if "Weights only load failed" not in str(error) or "Unsupported operand" in detail:  # junk, not a pickle
            raise FeatlabError(f"cannot read {path} as {what} (not a torch file: {detail})") from None
        raise FeatlabError(f"{path} is not {what} featlab can load safely: it holds Python objects beyond tensors "
                           f"({detail}); featlab refuses pickles, which can run code when loaded") from None
    except Exception as error:  # noqa: BLE001 - truncated zip, wrong format, ...: one clear line
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise FeatlabError(f"cannot read {path} as {what} ({type(error).__name__}: {first})") from None
