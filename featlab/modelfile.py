"""Model folders: one artifact file plus ``meta.json`` recording its sha256.

Loading a pickled model (joblib) executes code from the file, so featlab only loads an
artifact whose sha256 matches the one recorded when it was saved, and whose metadata
matches the features it will be applied to. Only load model folders you trust: the hash
detects corruption and tampering after saving, not a malicious folder made by someone else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from featlab.errors import FeatlabError
from featlab.fileio import atomic_write, atomic_write_json, read_json, sha256_file

META = "meta.json"


def save_model_folder(folder: str | os.PathLike, artifact: str, write: Callable, meta: dict) -> Path:
    """Write ``folder/artifact`` atomically with ``write(handle)``, then ``meta.json`` with its sha256."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / artifact, write)
    digest = sha256_file(folder / artifact)
    atomic_write_json(folder / META, {**meta, "artifact": artifact, "sha256": digest, "bytes": (folder / artifact).stat().st_size})
    return folder


def read_model_meta(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    if not (folder / META).is_file():
        raise FeatlabError(f"{folder} is not a featlab model folder (no {META})")
    return read_json(folder / META)


def verified_artifact(folder: str | os.PathLike) -> tuple[Path, dict]:
    """Return (artifact path, meta) after checking the artifact's sha256 against meta.json."""
    folder = Path(folder)
    meta = read_model_meta(folder)
    artifact = folder / meta["artifact"]
    if not artifact.is_file():
        raise FeatlabError(f"{artifact} is missing")
    actual = sha256_file(artifact)
    if actual != meta["sha256"]:
        raise FeatlabError(
            f"{artifact} has sha256 {actual[:16]}..., but {META} records {meta['sha256'][:16]}...: "
            "the file changed after it was saved; refusing to load it"
        )
    return artifact, meta


def resolve_model(model: str | os.PathLike, models_dir: str | os.PathLike) -> Path:
    """A model folder given as a path, a name under ``models_dir``, or ``latest``."""
    candidate = Path(model)
    if candidate.is_dir():
        return candidate
    if candidate.is_file() and candidate.parent.joinpath(META).is_file():
        return candidate.parent
    models_dir = Path(models_dir)
    if str(model) == "latest":
        folders = sorted(models_dir.glob(f"*/{META}"), key=lambda p: p.stat().st_mtime)
        if not folders:
            raise FeatlabError(f"no models in {models_dir}; run featlab fit-svm or featlab train-cnn first")
        return folders[-1].parent
    if (models_dir / str(model)).is_dir():
        return models_dir / str(model)
    raise FeatlabError(f"model not found: {model} (a folder, a name under {models_dir}, or 'latest')")
