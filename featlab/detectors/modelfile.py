"""Model folders: one artifact file plus ``meta.json``, sealed so that neither can lie.

* ``meta.json`` records the artifact's sha256, checked before anything reads the artifact.
* The artifact embeds a **sealed copy** of every metadata field featlab reads back (all but
  the few that change after saving, :data:`MUTABLE_FIELDS`); loading compares ``meta.json``
  with that copy and refuses an edited folder, naming the field.
* ``artifact`` must name a file inside the folder.
* SVM pipelines are stored with ``skops`` (no pickle: loading cannot run code) and only the
  scikit-learn classes featlab writes are accepted; CNN weights are tensors loaded with
  ``torch.load(weights_only=True)``. Folders from featlab 0.1 (``model.joblib``, a pickle) load
  only when the caller passes ``trust_pickle=True``.

What this does **not** do: it is not a signature. Someone who rewrites the artifact and
``meta.json`` together makes a consistent folder; the guarantee is that loading never runs
code from the folder and that a folder edited by hand (or corrupted) is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from featlab.core.errors import FeatlabError
from featlab.core.fileio import atomic_write, atomic_write_json, dumps_strict, read_json, sha256_file

META = "meta.json"
#: Fields that legitimately change after the artifact is written (progress, benchmark bookkeeping).
MUTABLE_FIELDS = frozenset({"artifact", "sha256", "bytes", "train_seconds", "epochs_done", "finished", "benchmark"})
#: Fields every model folder must have, by kind (what evaluate/predict/compare read).
REQUIRED = {
    "svm": ("kind", "artifact", "sha256", "bytes", "cache_key", "extraction", "backbone", "weights_info", "best_params",
            "options", "pca", "selection", "n_train", "n_valid", "train_seconds", "seed"),
    "cnn": ("kind", "artifact", "sha256", "bytes", "arch", "config", "preprocessing", "weights_info", "data_root",
            "best_epoch", "best_valid_auc", "n_train", "n_valid", "parameters", "seed"),
    # one-class detector on embeddings (featlab.analysis.clustering): an SVM-like folder
    "oneclass": ("kind", "artifact", "sha256", "bytes", "cache_key", "extraction", "backbone", "weights_info",
                 "best_params", "options", "pca", "selection", "n_train", "n_valid", "train_seconds", "seed", "method"),
    # convolutional autoencoder (featlab.detectors.autoencoder)
    "ae": ("kind", "artifact", "sha256", "bytes", "arch", "config", "preprocessing", "weights_info", "data_root",
           "best_epoch", "threshold", "n_train", "n_valid", "parameters", "seed"),
    # score-level ensemble of other folders (featlab.detectors.ensemble)
    "ensemble": ("kind", "artifact", "sha256", "bytes", "members", "rule", "data_root", "n_train", "n_valid", "seed"),
}


def _canonical(value) -> str:
    return dumps_strict(value, sort_keys=True)


def sealed_meta(meta: dict) -> str:
    """The JSON text of the fields an artifact seals (everything but :data:`MUTABLE_FIELDS`)."""
    return _canonical({k: v for k, v in meta.items() if k not in MUTABLE_FIELDS})


def save_model_folder(folder: str | os.PathLike, artifact: str, write: Callable, meta: dict) -> Path:
    """Write ``folder/artifact`` atomically with ``write(handle, sealed_json)``, then ``meta.json``.

    ``write`` must store ``sealed_json`` (from :func:`sealed_meta`) inside the artifact so that
    :func:`check_sealed` can compare it with ``meta.json`` at load time. ``meta`` is completed in place with
    the fields written beside it (``artifact``, ``sha256``, ``bytes``): it is then exactly ``meta.json``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sealed = sealed_meta(meta)
    atomic_write(folder / artifact, lambda handle: write(handle, sealed))
    meta.update(artifact=artifact, sha256=sha256_file(folder / artifact), bytes=(folder / artifact).stat().st_size)
    atomic_write_json(folder / META, meta)
    return folder


def refuse_existing_model(folder: str | os.PathLike, force: bool = False) -> None:
    """Refuse to replace a model folder that already exists (its model and reports would be lost) unless ``force``."""
    folder = Path(folder)
    if folder.exists() and not force and (not folder.is_dir() or any(folder.iterdir())):
        raise FeatlabError(f"{folder} already exists; choose another --name, or pass --force to replace it")


def save_new_model_folder(folder: str | os.PathLike, artifact: str, write: Callable, meta: dict,
                          force: bool = False) -> Path:
    """Like :func:`save_model_folder` for a model written in one go (SVM, one-class): the folder is built
    beside its destination and renamed into place, so a failure (a full disk, Ctrl-C) leaves no
    half-written folder, and an existing folder is replaced only with ``force`` (then atomically)."""
    import shutil
    import uuid

    folder = Path(folder)
    refuse_existing_model(folder, force)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        save_model_folder(staging, artifact, write, meta)
        if folder.exists():
            retired = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(folder, retired)
            os.replace(staging, folder)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def update_model_meta(folder: str | os.PathLike, **fields) -> dict:
    """Change mutable fields of ``meta.json`` (progress, bookkeeping); sealed fields cannot change."""
    sealed = [k for k in fields if k not in MUTABLE_FIELDS]
    if sealed:
        raise ValueError(f"fields {sealed} are sealed in the artifact and cannot be updated")
    path = Path(folder) / META
    meta = {**read_json(path), **fields}
    atomic_write_json(path, meta)
    return meta


def read_model_meta(folder: str | os.PathLike) -> dict:
    """``meta.json`` of a model folder, checked for readability, required fields and a safe artifact name."""
    folder = Path(folder)
    path = folder / META
    if not path.is_file():
        raise FeatlabError(f"{folder} is not a featlab model folder (no {META})")
    try:
        meta = read_json(path)
    except (OSError, UnicodeDecodeError) as error:
        raise FeatlabError(f"cannot read {path}: {error.strerror if isinstance(error, OSError) else error}") from None
    except RecursionError:  # a crafted file nested beyond what a parser should follow
        raise FeatlabError(f"{path} is nested too deeply to be a featlab meta.json; refusing the folder") from None
    except json.JSONDecodeError as error:
        raise FeatlabError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}); refusing the folder") from None
    if not isinstance(meta, dict):
        raise FeatlabError(f"{path} does not hold a JSON object; refusing the folder")
    kind = meta.get("kind")
    if kind not in REQUIRED:
        raise FeatlabError(f"{path}: field 'kind' is {kind!r}, expected one of {', '.join(REQUIRED)}")
    missing = [field for field in REQUIRED[kind] if field not in meta]
    if missing:
        raise FeatlabError(f"{path} lacks the field(s) {', '.join(missing)}; refusing the folder")
    artifact = meta["artifact"]
    if not isinstance(artifact, str) or not artifact or Path(artifact).name != artifact or artifact in (".", ".."):
        raise FeatlabError(f"{path}: field 'artifact' must name a file inside the folder, not {artifact!r}")
    return meta


def read_verified_artifact(folder: str | os.PathLike, meta: dict) -> tuple[Path, bytes]:
    """(artifact path, its bytes): read once, and checked against the sha256 ``meta.json`` records, so what is
    deserialised is exactly what was hashed (no second read that could see another file)."""
    import hashlib

    artifact = Path(folder) / meta["artifact"]
    if not artifact.is_file():
        raise FeatlabError(f"{artifact} is missing")
    try:
        data = artifact.read_bytes()
    except OSError as error:
        raise FeatlabError(f"cannot read {artifact}: {error.strerror}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != meta["sha256"]:
        raise FeatlabError(
            f"{artifact} has sha256 {actual[:16]}..., but {META} records {str(meta['sha256'])[:16]}...: "
            "the file changed after it was saved; refusing to load it"
        )
    return artifact, data


def verified_artifact(folder: str | os.PathLike, meta: dict | None = None) -> tuple[Path, dict, bytes]:
    """(artifact path, meta, artifact bytes) of a model folder: ``meta.json`` read (unless given) and the
    artifact read once and checked against the sha256 it records."""
    meta = read_model_meta(folder) if meta is None else meta
    artifact, data = read_verified_artifact(folder, meta)
    return artifact, meta, data


def check_sealed(folder: str | os.PathLike, meta: dict, sealed_json: str | None) -> None:
    """Refuse a folder whose ``meta.json`` differs from the copy sealed in its artifact, naming the field."""
    if sealed_json is None:
        raise FeatlabError(f"{folder}: the artifact carries no sealed metadata; refusing the folder")
    sealed = json.loads(sealed_json)
    fields = sorted((set(sealed) | set(meta)) - MUTABLE_FIELDS)
    for field in fields:
        if _canonical(meta.get(field)) != _canonical(sealed.get(field)):
            raise FeatlabError(
                f"{Path(folder) / META}: field {field!r} differs from the copy sealed in {meta['artifact']} "
                f"(meta.json: {_short(meta.get(field))}, sealed: {_short(sealed.get(field))}); the folder was "
                "edited after saving, refusing it"
            )


def _short(value) -> str:
    text = _canonical(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_model(model: str | os.PathLike, models_dir: str | os.PathLike, include_unfinished: bool = False) -> Path:
    """A model folder given as a path, a name under ``models_dir``, or ``latest``.

    ``latest`` is the newest *finished* model: a CNN whose training was interrupted is skipped
    unless ``include_unfinished``.
    """
    candidate = Path(model)
    if candidate.is_dir():
        return candidate
    if candidate.is_file() and candidate.parent.joinpath(META).is_file():
        return candidate.parent
    models_dir = Path(models_dir)
    if str(model) == "latest":
        folders = sorted(models_dir.glob(f"*/{META}"), key=lambda p: p.stat().st_mtime)
        usable = [p.parent for p in folders if include_unfinished or _finished(p)]
        if not usable:
            extra = f" ({len(folders)} unfinished)" if folders else ""
            raise FeatlabError(f"no finished models in {models_dir}{extra}; run featlab fit-svm or featlab train-cnn first")
        return usable[-1]
    if (models_dir / str(model)).is_dir():
        return models_dir / str(model)
    raise FeatlabError(f"model not found: {model} (a folder, a name under {models_dir}, or 'latest')")


def _finished(meta_path: Path) -> bool:
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError):
        return False
    return meta.get("kind") != "cnn" or bool(meta.get("finished"))
