"""Groups of evaluation images (source dataset, manipulation difficulty, users' own groups).

Metrics are broken down by group in every report. Groups come from, in this order:

* ``ROOT/../manifest.csv`` or ``ROOT/manifest.csv`` written by ``featlab data build``: each image's
  ``source`` (``140k`` / ``ciplab``) becomes ``source=<name>``, and the CIPLAB fakes' file-name
  prefix (``easy_`` / ``mid_`` / ``hard_``) becomes ``difficulty=<level>``;
* ``ROOT/groups.csv`` or a CSV given explicitly: ``path,group`` rows (paths relative to ROOT or
  absolute; several rows per image give several groups).

An image can sit in several groups. Groups never change the main metrics.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from featlab.core.errors import FeatlabError

BUILD_MANIFEST = "manifest.csv"
GROUPS_CSV = "groups.csv"
_DIFFICULTY = re.compile(r"(?:^|[-_/])(easy|mid|hard)_\d", re.IGNORECASE)


def _resolved(path: str | os.PathLike) -> str:
    return str(Path(path).resolve())


def _from_build_manifest(root: Path) -> dict[str, list[str]]:
    for manifest_path in (root / BUILD_MANIFEST, root.parent / BUILD_MANIFEST):
        if not manifest_path.is_file():
            continue
        table = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
        if not {"path", "source"} <= set(table.columns):
            continue
        groups: dict[str, list[str]] = {}
        for rel, source, label in zip(table.path, table.source, table.get("label_name", [""] * len(table))):
            path = _resolved(manifest_path.parent / rel)
            names = [f"source={source}"]
            match = _DIFFICULTY.search(Path(rel).name)
            if source == "ciplab" and label == "fake" and match:
                names.append(f"difficulty={match.group(1).lower()}")
            groups[path] = names
        return groups
    return {}


def read_groups_csv(path: str | os.PathLike, root: str | os.PathLike) -> dict[str, list[str]]:
    """``path,group`` rows -> {absolute path: [groups]}; relative paths are taken from ``root``."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise FeatlabError(f"cannot read groups file {path}: {error}") from None
    if not {"path", "group"} <= set(table.columns):
        raise FeatlabError(f"{path}: a groups file needs the columns path,group (found {', '.join(table.columns)})")
    groups: dict[str, list[str]] = {}
    for rel, group in zip(table.path, table.group):
        if not rel or not group:
            continue
        target = Path(rel) if Path(rel).is_absolute() else Path(root) / rel
        groups.setdefault(_resolved(target), []).append(group)
    return groups


def find_groups(root: str | os.PathLike, groups_csv: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Every known group of the images under ``root``: {absolute path: [group names]}."""
    root = Path(root)
    groups = _from_build_manifest(root)
    extra = groups_csv or (root / GROUPS_CSV if (root / GROUPS_CSV).is_file() else None)
    if extra:
        for path, names in read_groups_csv(extra, root).items():
            groups.setdefault(path, []).extend(n for n in names if n not in groups.get(path, []))
    return groups


def groups_for(paths: list[str], groups: dict[str, list[str]]) -> list[list[str]]:
    """The group names of each path (an empty list where none is known)."""
    return [groups.get(_resolved(p), []) for p in paths]
