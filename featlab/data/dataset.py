"""Dataset discovery, the manifest, and robust image decoding.

Layout (the "combined-real-vs-fake" layout of the original write-up)::

    ROOT/{train,valid,test}/{real,fake}/*.jpg      split dataset
    ROOT/{real,fake}/*.jpg                         a single, unsplit folder (split = "all")

Every file found under a class folder appears in the manifest: decodable images
with ``status == "ok"``, everything else with ``status == "quarantined"`` and a
human-readable ``reason``. Nothing is dropped silently.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from featlab import LABELS
from featlab.core.errors import BadImageError, FeatlabError
from featlab.core.fileio import sha256_file

SPLITS: tuple[str, ...] = ("train", "valid", "test")
UNSPLIT = "all"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
#: Images with more pixels than this are refused as possible decompression bombs
#: (PIL's own default; a 4K photo has 8.3 M pixels).
MAX_IMAGE_PIXELS = 89_478_485

MANIFEST_COLUMNS = ["path", "split", "label", "label_name", "bytes", "sha256", "status", "reason"]

# Pillow warns or raises on its own limit; featlab checks sizes itself with a clearer message.
Image.MAX_IMAGE_PIXELS = None


def load_rgb(path: str | os.PathLike | bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file into an 8-bit RGB PIL image, or raise :class:`BadImageError`.

    Handles EXIF orientation, CMYK, alpha (composited on white), palette, 16-bit and
    grayscale images. Empty, truncated, non-image and oversized files raise with a reason.

    Parameters
    ----------
    path : path of the image file, or its bytes (an upload to the service).
    max_pixels : refuse images with more pixels than this (decompression-bomb guard).

    Returns
    -------
    PIL.Image.Image in mode ``"RGB"``.
    """
    import io

    data = bytes(path) if isinstance(path, (bytes, bytearray, memoryview)) else None
    path = Path(path) if data is None else None
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise BadImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data) if data is not None else path)
            if image.width * image.height > max_pixels:
                raise BadImageError(
                    f"{image.width}x{image.height} pixels exceeds the {max_pixels:,}-pixel limit "
                    "(possible decompression bomb)"
                )
            image.load()
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError("not an image format Pillow can read") from None
    except (PermissionError, FileNotFoundError, IsADirectoryError) as error:
        raise BadImageError(unreadable_reason(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(f"corrupt or truncated image: {error}") from None
    except Image.DecompressionBombError as error:  # pragma: no cover - limit disabled above
        raise BadImageError(f"possible decompression bomb: {error}") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the pixels
        pass
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB with the right colour semantics."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Deep grayscale: rescale to 8 bits instead of clipping (Pillow's convert clips).
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(array.max()), 1.0)
        if mode == "F" and array.max() <= 1.0:
            top = 1.0
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _class_files(class_dir: Path) -> list[Path]:
    """Files under ``class_dir`` (symlinked folders not followed), sorted as paths: os.scandir, which
    knows a regular file without a stat call (100k files in well under a second)."""
    found, stack = [], [str(class_dir)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file():
                    found.append(entry.path)
    found.sort(key=lambda path: path.split(os.sep))
    return [Path(path) for path in found]


def discover(root: str | os.PathLike, one_class_ok: bool = False) -> list[tuple[Path, str, str]]:
    """List ``(file, split, class_name)`` for every file under ``root``'s class folders.

    Raises :class:`FeatlabError` with one line naming the folder when the layout is wrong
    or a class folder holds no image. With ``one_class_ok`` (evaluation sets such as a folder
    of fakes), a split may hold one class only: ``ROOT/fake/`` or ``ROOT/test/fake/`` suffices.
    """
    root = Path(root)
    if not root.is_dir():
        raise FeatlabError(f"dataset folder not found: {root}")
    names = {p.name for p in root.iterdir() if p.is_dir()}
    splits = [s for s in SPLITS if s in names]
    if splits:
        split_dirs = [(root / s, s) for s in splits]
    elif set(LABELS) <= names or (one_class_ok and names & set(LABELS)):
        split_dirs = [(root, UNSPLIT)]
    else:
        found = ", ".join(sorted(names)) or "nothing"
        raise FeatlabError(
            f"{root}: expected {{train,valid,test}}/{{real,fake}}/ or {{real,fake}}/ sub-folders, found {found}"
        )
    entries: list[tuple[Path, str, str]] = []
    for split_dir, split in split_dirs:
        present = {p.name for p in split_dir.iterdir() if p.is_dir()}
        missing = [c for c in LABELS if c not in present]
        if missing and not (one_class_ok and len(missing) < len(LABELS)):
            raise FeatlabError(f"{split_dir}: missing class folder(s) {', '.join(missing)} (need real/ and fake/)")
        found_images = False
        for class_name in LABELS:
            if class_name in missing:
                continue
            files = _class_files(split_dir / class_name)
            has_images = any(f.suffix.lower() in IMAGE_EXTENSIONS for f in files)
            if not has_images and not one_class_ok:
                raise FeatlabError(f"{split_dir / class_name}: class folder holds no images")
            found_images |= has_images
            entries.extend((f, split, class_name) for f in files)
        if not found_images:
            raise FeatlabError(f"{split_dir}: no images in its class folders")
    return entries


def unreadable_reason(error: OSError) -> str:
    """The quarantine reason for a file the process cannot open or read."""
    return f"cannot read file: {error.strerror or type(error).__name__}"


def _row(path: str, split: str, class_name: str, size: int = 0, digest: str = "") -> dict:
    return {"path": path, "split": split, "label": LABELS[class_name], "label_name": class_name, "bytes": size,
            "sha256": digest, "status": "ok", "reason": ""}


def _describe(entry: tuple[Path, str, str], check_images: bool, max_pixels: int, memo=None) -> dict:
    path, split, class_name = entry
    row = _row(str(path.resolve()), split, class_name)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        row.update(status="quarantined", reason=f"not an image file extension ({path.suffix or 'none'})")
        return row
    try:
        row["bytes"], row["sha256"] = _size_and_hash(path, row["path"], memo)
    except OSError as error:  # permission denied, vanished, I/O error: quarantined, never fatal
        row.update(status="quarantined", reason=unreadable_reason(error))
        return row
    if check_images:
        try:
            load_rgb(path, max_pixels=max_pixels)
        except BadImageError as error:
            row.update(status="quarantined", reason=str(error))
    return row


def _size_and_hash(path: Path, resolved: str, memo) -> tuple[int, str]:
    """(size, sha256), from ``memo`` (:class:`featlab.data.hashmemo.HashMemo`) when the file's stat is unchanged."""
    if memo is None:
        return path.stat().st_size, sha256_file(path)
    from featlab.data.hashmemo import file_stat

    before = file_stat(path)
    digest = memo.lookup(resolved, before)
    if digest is None:
        digest = sha256_file(path)
        if file_stat(path) == before:  # not changed while it was read: safe to remember
            memo.remember(resolved, before, digest)
    return before[0], digest


def scan_dataset(
    root: str | os.PathLike,
    check_images: bool = True,
    max_pixels: int = MAX_IMAGE_PIXELS,
    workers: int = 4,
    one_class_ok: bool = False,
    memo=None,
) -> pd.DataFrame:
    """Build the manifest of a dataset folder.

    Parameters
    ----------
    root : dataset root in the ``{train,valid,test}/{real,fake}`` (or ``{real,fake}``) layout.
    check_images : decode every image to quarantine broken ones now (slower, thorough).
        Without it, only the file extension is checked here; decoding problems are then
        caught and reported by the stage that reads the pixels.
    max_pixels : decompression-bomb limit passed to :func:`load_rgb`.
    workers : threads used for hashing/decoding (both release the GIL).
    one_class_ok : accept splits holding only real or only fake images (evaluation sets).
    memo : a :class:`featlab.data.hashmemo.HashMemo`: files whose stat is unchanged are not hashed again.

    Returns
    -------
    pandas.DataFrame with columns ``MANIFEST_COLUMNS``; ``label`` is 0 for real, 1 for fake.
    """
    entries = discover(root, one_class_ok=one_class_ok)
    rows: list[dict | None] = [None] * len(entries)
    if memo is not None and not check_images:
        rows = _remembered_rows(entries, memo)
    pending = [k for k, row in enumerate(rows) if row is None]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for k, row in zip(pending, pool.map(lambda k: _describe(entries[k], check_images, max_pixels, memo), pending)):
            rows[k] = row
    if memo is not None:
        memo.commit()
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def _remembered_rows(entries: list[tuple[Path, str, str]], memo) -> list[dict | None]:
    """Rows of the files whose stat matches the memo, in one cheap serial pass (None: to be described).

    One ``lstat`` per file; folders are resolved once each, and only symlinked files one by one.
    """
    import stat as stat_module

    memo.load()
    folders: dict[str, str] = {}
    rows: list[dict | None] = []
    for path, split, class_name in entries:
        row = None
        text = str(path)  # plain strings: Path objects cost more than the system calls at 100k files
        if os.path.splitext(text)[1].lower() in IMAGE_EXTENSIONS:
            try:
                info = os.lstat(text)
                if stat_module.S_ISLNK(info.st_mode):
                    resolved = os.path.realpath(text)
                    info = os.stat(resolved)
                else:
                    folder, name = os.path.split(text)
                    if folder not in folders:
                        folders[folder] = str(Path(folder).resolve())
                    resolved = os.path.join(folders[folder], name)
            except OSError:
                resolved = None  # described (and quarantined) in the full pass
            if resolved is not None:
                digest = memo.lookup(resolved, (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino))
                if digest is not None:
                    row = _row(resolved, split, class_name, info.st_size, digest)
        rows.append(row)
    return rows


def scan_images(target: str | os.PathLike) -> pd.DataFrame:
    """Manifest of an unlabelled image file or folder (any layout), for prediction.

    Labels are ``-1`` (unknown). In a folder, files with image extensions are scored; every other entry
    (a ``.heic`` or ``.txt`` file, a FIFO, a socket) is listed as skipped with its reason, never read.
    An explicit single file is always included (and quarantined if unreadable later).
    """
    target = Path(target)
    if target.is_file():
        return files_manifest([target])
    if not target.is_dir():
        raise FeatlabError(f"not found: {target}")
    entries = sorted(p for p in target.rglob("*") if not p.is_dir())
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise FeatlabError(f"{target}: no image files found ({len(entries)} other entries)")
    chosen = set(files)
    others = [{"path": str(p.resolve()), "split": "predict", "label": -1, "label_name": "", "bytes": 0, "sha256": "",
               "status": "quarantined", "reason": _not_an_image(p)} for p in entries if p not in chosen]
    manifest = files_manifest(files)
    if not others:
        return manifest
    return pd.concat([manifest, pd.DataFrame(others, columns=MANIFEST_COLUMNS)], ignore_index=True)


def _not_an_image(path: Path) -> str:
    import stat

    try:
        mode = path.lstat().st_mode
    except OSError as error:
        return unreadable_reason(error)
    if stat.S_ISFIFO(mode):
        return "not a regular file (a FIFO)"
    if stat.S_ISSOCK(mode):
        return "not a regular file (a socket)"
    if stat.S_ISLNK(mode):
        return "a broken symbolic link"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    suffix = path.suffix.lower() or "no extension"
    return f"not an image type featlab decodes ({suffix}; it reads {', '.join(sorted(IMAGE_EXTENSIONS))})"


def files_manifest(files: list[str | os.PathLike], split: str = "predict") -> pd.DataFrame:
    """Manifest of given image files (labels unknown, ``-1``); unreadable files are quarantined, never fatal."""
    rows = []
    for p in map(Path, files):
        row = {"path": str(p.resolve()), "split": split, "label": -1, "label_name": "", "bytes": 0,
               "sha256": "", "status": "ok", "reason": ""}
        try:
            row["bytes"] = p.stat().st_size
            row["sha256"] = sha256_file(p)
        except OSError as error:
            row.update(status="quarantined", reason=unreadable_reason(error))
        rows.append(row)
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def summarize(manifest: pd.DataFrame) -> pd.DataFrame:
    """Counts per split x class (usable images) plus a quarantined column."""
    ok = manifest[manifest.status == "ok"]
    table = pd.crosstab(ok.split, ok.label_name).reindex(columns=list(LABELS), fill_value=0)
    bad = manifest[manifest.status != "ok"].groupby("split").size()
    table["quarantined"] = bad.reindex(table.index, fill_value=0)
    return table


def evaluation_split(manifest: pd.DataFrame, split: str, root) -> str:
    """The split to score: ``split`` itself, or ``all`` for an unsplit dataset folder."""
    splits = set(manifest.split)
    if split in splits:
        return split
    if splits == {"all"}:
        return "all"
    raise FeatlabError(f"{root}: no split {split!r} (has {', '.join(sorted(splits))})")
