"""On-disk embedding cache: content-addressed, append-only, crash-safe.

One folder per extraction key (backbone, weights fingerprint, preprocessing, layer,
precision, engine)::

    features/<backbone>-<key12>/
        meta.json                 the key's config, versions, dates
        shards/<id>.npy           float32 (n, dim) embeddings, memory-mappable
        shards/<id>.json          what the commit recorded: rows, dim, the array file's size
        shards/<id>.keys          the n content hashes (sha256), one per line: the commit marker
        shards/damaged/           shards that failed the open-time check (their images are re-extracted)
        failures.jsonl            images that could not be decoded: {"sha256", "path", "reason"}
        index.csv                 the dataset of the last extraction: path, split, label, sha256, status, reason

Embeddings are keyed by the image's content hash, so renamed or copied files are free,
edited files are recomputed, and two keys never mix (different folders). A shard counts
only once its ``.keys`` file exists; both files are written with temp file + rename, the
array first, so a process killed at any moment leaves either a complete shard or an
ignorable orphan ``.npy`` that the next run removes and recomputes.

The cache does not trust itself: when a shard is first read, its key count must equal its array's
row count and the array's size must match its header and what the commit recorded. A shard that
fails (truncated, a lost key line, a swapped file) is moved to ``shards/damaged/`` with one warning
line, and its images count as not cached, so the next ``featlab extract`` recomputes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from featlab.core.errors import FeatlabError
from featlab.core.fileio import atomic_write, atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
INDEX_COLUMNS = ["path", "split", "label", "sha256", "status", "reason"]


def cache_key(config: dict) -> str:
    """Stable hex digest of the parts of an extraction config that change the numbers."""
    payload = json.dumps({"format": CACHE_FORMAT, **config}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class EmbeddingCache:
    """Read and append embeddings for one extraction key.

    Parameters
    ----------
    folder : the cache folder (``features/<backbone>-<key12>``).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._locations: dict[str, tuple[Path, int]] | None = None
        self._seen_keys: set[Path] = set()
        self._arrays: dict[Path, np.ndarray] = {}
        self._lock_depth = 0

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, root: str | os.PathLike, name: str, config: dict, extra_meta: dict | None = None) -> EmbeddingCache:
        """Open the cache for ``config`` under ``root``, creating it on first use."""
        key = cache_key(config)
        cache = cls(Path(root) / f"{name}-{key[:12]}")
        meta_path = cache.folder / "meta.json"
        if meta_path.exists():
            meta = cache.meta
            if meta.get("key") != key:
                raise FeatlabError(f"{cache.folder}: meta.json belongs to another extraction key; remove the folder")
        else:
            (cache.folder / "shards").mkdir(parents=True, exist_ok=True)
            atomic_write_json(meta_path, {"key": key, "config": config, **(extra_meta or {})})
        return cache

    @property
    def meta(self) -> dict:
        path = self.folder / "meta.json"
        if not path.exists():
            raise FeatlabError(f"{self.folder} is not a featlab embedding cache (no meta.json)")
        try:
            meta = read_json(path)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
            raise FeatlabError(f"{path} is not readable JSON ({type(error).__name__}); remove the folder "
                               f"{self.folder.name} and run featlab extract again") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("key"), str) or not isinstance(meta.get("config"), dict):
            raise FeatlabError(f"{path} is not a featlab cache record (no key/config); remove the folder "
                               f"{self.folder.name} and run featlab extract again")
        return meta

    def update_meta(self, **fields) -> None:
        atomic_write_json(self.folder / "meta.json", {**self.meta, **fields})

    def clean_orphans(self) -> None:
        """Remove temp files and arrays whose shard was never committed (a killed run).

        Call it only while holding :meth:`writer_lock`: another writer's half-written shard looks the same.
        """
        shards = self.folder / "shards"
        for tmp in shards.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for part in [*shards.glob("*.npy"), *shards.glob("*.json")]:
            if not part.with_suffix(".keys").exists():
                log.info("removing uncommitted shard %s", part.name)
                part.unlink(missing_ok=True)

    @contextlib.contextmanager
    def writer_lock(self):
        """Hold the cache's writer lock (an advisory ``flock``, re-entrant within this object).

        Writers take it only to commit a shard (see :meth:`add`) or to remove orphans, so several
        processes (or Ray workers) can extract into one cache at once: each commit re-reads what the
        others committed and stores only new images, so no row is ever stored twice. The lock dies
        with its process (kill -9 included).
        """
        import fcntl

        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        handle = open(self.folder / ".lock", "a+")  # noqa: SIM115 - closed in finally
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._lock_depth = 1
            yield self
        finally:
            self._lock_depth = 0
            handle.close()

    # ---------------------------------------------------------------- shard I/O
    def _scan(self) -> dict[str, tuple[Path, int]]:
        if self._locations is None:
            self._locations, self._seen_keys = {}, set()
            self.refresh()
        return self._locations

    def refresh(self) -> None:
        """Read the shards committed since the last scan (by this or another process)."""
        if self._locations is None:
            self._scan()
            return
        for keys_file in sorted((self.folder / "shards").glob("*.keys")):
            if keys_file in self._seen_keys:
                continue
            hashes = keys_file.read_text().split()
            array_file = keys_file.with_suffix(".npy")
            problem = _shard_problem(array_file, hashes)
            if problem:
                self._quarantine(keys_file, problem, len(hashes))
                continue
            self._seen_keys.add(keys_file)
            for row, digest in enumerate(hashes):
                self._locations.setdefault(digest, (array_file, row))

    def _quarantine(self, keys_file: Path, problem: str, n: int) -> None:
        """Move a damaged shard out of the way (when the folder is writable) and say so once."""
        self._seen_keys.add(keys_file)
        damaged = keys_file.parent / "damaged"
        moved = False
        try:
            damaged.mkdir(exist_ok=True)
            for part in (keys_file, keys_file.with_suffix(".npy"), keys_file.with_suffix(".json")):
                if part.exists():
                    os.replace(part, damaged / part.name)
            moved = True
        except OSError:
            pass
        where = f"moved to {damaged}" if moved else "ignored (the folder is read-only)"
        log.warning("cache: shard %s is damaged (%s); %s, its %d image(s) will be re-extracted by featlab extract",
                    keys_file.stem, problem, where, n)

    def __contains__(self, digest: str) -> bool:
        return digest in self._scan()

    def __len__(self) -> int:
        return len(self._scan())

    def add(self, hashes: list[str], embeddings: np.ndarray) -> Path | None:
        """Commit one shard: ``embeddings[i]`` is the embedding of the image with ``hashes[i]``.

        Under the writer lock, rows another writer committed meanwhile are dropped first, so every
        image is stored once. Returns the shard's array file (None when nothing was new).
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(hashes) != len(embeddings):
            raise ValueError(f"need one row per hash, got {embeddings.shape} for {len(hashes)} hashes")
        with self.writer_lock():
            self.refresh()
            seen: set[str] = set()
            keep = [i for i, h in enumerate(hashes) if h not in self._locations and not (h in seen or seen.add(h))]
            if not keep:
                return None
            hashes, embeddings = [hashes[i] for i in keep], embeddings[keep]
            stem = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
            shards = self.folder / "shards"
            array_file = shards / f"{stem}.npy"
            atomic_write(array_file, lambda handle: np.save(handle, embeddings))
            atomic_write_json(shards / f"{stem}.json", {"rows": len(hashes), "dim": int(embeddings.shape[1]),
                                                        "bytes": array_file.stat().st_size})
            atomic_write_text(shards / f"{stem}.keys", "\n".join(hashes) + "\n")
            self._seen_keys.add(shards / f"{stem}.keys")
            for row, digest in enumerate(hashes):
                self._locations.setdefault(digest, (array_file, row))
        return array_file

    def get(self, hashes: list[str] | pd.Series, scattered: bool = False) -> np.ndarray:
        """Embeddings for ``hashes`` in that order, as a float32 array (n, dim).

        ``scattered``: the rows are a sparse random subset (streaming fits); each row is read with
        ``pread`` straight into the result instead of through a memory map, so the shards' pages
        never count in this process's memory (a mapped page brings its cached neighbours with it).
        """
        locations = self._scan()
        missing = [h for h in hashes if h not in locations]
        if missing:
            raise FeatlabError(f"{len(missing)} image(s) have no cached embedding in {self.folder}; run featlab extract")
        if len(hashes) == 0:
            return np.zeros((0, int(self.meta.get("embed_dim", 0))), dtype=np.float32)
        # One fancy-indexed read per shard rather than one Python-level copy per row.
        by_shard: dict[Path, tuple[list[int], list[int]]] = {}
        for position, digest in enumerate(hashes):
            array_file, row = locations[digest]
            targets, rows = by_shard.setdefault(array_file, ([], []))
            targets.append(position)
            rows.append(row)
        out = None
        for array_file, (targets, rows) in by_shard.items():
            if scattered:
                out = _read_rows(array_file, targets, rows, len(hashes), out)
                continue
            if array_file not in self._arrays:
                self._arrays[array_file] = np.load(array_file, mmap_mode="r")
            block = self._arrays[array_file][rows]
            if out is None:
                out = np.empty((len(hashes), block.shape[1]), dtype=np.float32)
            out[targets] = block
        return out

    # ---------------------------------------------------------------- failures
    def record_failures(self, failures: list[dict]) -> None:
        if not failures:
            return
        with open(self.folder / "failures.jsonl", "a", encoding="utf-8") as handle:
            for failure in failures:
                handle.write(json.dumps(failure) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def failures(self) -> dict[str, str]:
        """sha256 -> reason for images known to be undecodable (a torn last line is ignored)."""
        path = self.folder / "failures.jsonl"
        found: dict[str, str] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                found[record["sha256"]] = record["reason"]
        return found

    # ------------------------------------------------------------------- index
    # ``index.csv`` is the dataset of the last ``featlab extract`` (what fit-svm trains on); every
    # other dataset evaluated with this cache keeps its own ``indexes/<name>.csv``, so scoring a
    # model on new data never changes what it was trained on.
    def _index_path(self, name: str | None) -> Path:
        return self.folder / "index.csv" if name is None else self.folder / "indexes" / f"{name}.csv"

    def dataset_index(self, data_root: str | os.PathLike | None) -> tuple[str | None, str]:
        """(index name, absolute root) of a dataset this cache holds features of; ``None`` picks the
        dataset extracted last (``index.csv``)."""
        if not data_root:
            return None, self.meta.get("data_root", "")
        root = str(Path(data_root).resolve())
        name = dataset_tag(root)
        if not self._index_path(name).is_file():
            raise FeatlabError(f"{self.folder.name} holds no features of {root}; run featlab extract --data {root}")
        return name, root

    def datasets(self) -> list[str]:
        """Index names of every dataset extracted into this cache."""
        return sorted(p.stem for p in (self.folder / "indexes").glob("*.csv"))

    def write_index(self, manifest: pd.DataFrame, name: str | None = None) -> None:
        atomic_write_text(self._index_path(name), manifest[INDEX_COLUMNS].to_csv(index=False))

    def index(self, name: str | None = None) -> pd.DataFrame:
        path = self._index_path(name)
        if not path.exists():
            raise FeatlabError(f"{self.folder} has no {path.name}; extract a dataset first (featlab extract, or featlab.extract_dataset)")
        return pd.read_csv(path, dtype={"sha256": str, "reason": str, "path": str, "split": str}, keep_default_na=False)

    def load_split(self, split: str, index_name: str | None = None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """``(X, y, index)`` for one split of a dataset's index (usable images only)."""
        index = self.index(index_name)
        if split not in set(index.split):
            raise FeatlabError(f"split {split!r} not in {self._index_path(index_name)} (have {sorted(set(index.split))})")
        rows = index[(index.split == split) & (index.status == "ok")].reset_index(drop=True)
        return self.get(list(rows.sha256)), rows.label.to_numpy(dtype=np.int64), rows


def dataset_tag(root: str | os.PathLike) -> str:
    """A short, stable name for a dataset folder: its name plus a digest of its absolute path."""
    resolved = str(Path(root).resolve())
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(resolved).name)[:40] or "data"
    return f"{name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def find_caches(features_dir: str | os.PathLike, backbone: str | None = None) -> list[EmbeddingCache]:
    """Caches under ``features_dir`` (optionally of one backbone), newest first."""
    folder = Path(features_dir)
    if not folder.is_dir():
        return []
    caches = []
    for meta_path in folder.glob("*/meta.json"):
        cache = EmbeddingCache(meta_path.parent)
        if backbone is None or cache.meta.get("config", {}).get("backbone") == backbone:
            caches.append(cache)
    return sorted(caches, key=lambda c: (c.folder / "meta.json").stat().st_mtime, reverse=True)


def select_cache(features_dir: str | os.PathLike, backbone: str | None = None) -> EmbeddingCache:
    """The one cache a command should use; a clear error when there is none or a choice to make."""
    caches = [c for c in find_caches(features_dir, backbone) if (c.folder / "index.csv").exists()]
    if not caches:
        what = f" for backbone {backbone}" if backbone else ""
        raise FeatlabError(f"no extracted features{what} in {features_dir}; extract a dataset first (featlab extract, or featlab.extract_dataset)")
    if len(caches) > 1 and backbone is None:
        names = sorted({c.meta["config"]["backbone"] for c in caches})
        if len(names) > 1:
            raise FeatlabError(f"features of several backbones in {features_dir} ({', '.join(names)}); name the backbone")
    return caches[0]


def _npy_header(handle) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran order, dtype, offset of the data) of an open ``.npy`` file, reading only its header."""
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(handle)
    return shape, fortran_order, dtype, handle.tell()


def _shard_problem(array_file: Path, hashes: list[str]) -> str:
    """Why a committed shard cannot be trusted, or "" (reads the array's header and size, not its data)."""
    try:
        size = array_file.stat().st_size
        with open(array_file, "rb") as handle:
            shape, fortran_order, dtype, header = _npy_header(handle)
    except FileNotFoundError:
        return "its array file is missing"
    except (OSError, ValueError) as error:
        return f"its array file is unreadable: {error}"
    if fortran_order or dtype != np.float32 or len(shape) != 2:
        return f"its array is {dtype} {shape}, not a float32 matrix"
    if shape[0] != len(hashes):
        return f"{len(hashes)} keys for {shape[0]} rows"
    expected = header + shape[0] * shape[1] * 4
    if size != expected:
        return f"its array file has {size} bytes, its header says {expected}"
    record_file = array_file.with_suffix(".json")
    if record_file.exists():  # shards committed before featlab 0.3 have none
        try:
            record = read_json(record_file)
        except (OSError, ValueError):
            return "its commit record is unreadable"
        if record != {"rows": shape[0], "dim": shape[1], "bytes": size}:
            return f"it does not match its commit record ({record})"
    return ""


_HAS_PREADV = hasattr(os, "preadv")


def _read_rows(array_file: Path, targets: list[int], rows: list[int], n: int, out: np.ndarray | None) -> np.ndarray:
    """``out[targets[i]] = shard[rows[i]]`` read with ``pread`` (no memory map); ``out`` made on first use."""
    with open(array_file, "rb", buffering=0) as handle:
        shape, fortran_order, dtype, start = _npy_header(handle)
        if fortran_order or dtype != np.float32 or len(shape) != 2:
            raise FeatlabError(f"shard {array_file.name}: expected a C-ordered float32 matrix, found {dtype} {shape}")
        if out is None:
            out = np.empty((n, shape[1]), dtype=np.float32)
        row_bytes = shape[1] * 4
        for target, row in zip(targets, rows):
            buffer, offset = memoryview(out[target]), start + row * row_bytes
            if _HAS_PREADV:
                got = os.preadv(handle.fileno(), [buffer], offset)
            else:  # Windows
                handle.seek(offset)
                got = handle.readinto(buffer)
            if got != row_bytes:
                raise FeatlabError(f"shard {array_file.name} is shorter than its keys file; delete it and re-extract")
    return out
