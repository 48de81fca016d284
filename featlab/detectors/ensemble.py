"""Kind ``ensemble``: a score-level ensemble of saved detectors (say, the SVM on frozen features and the fine-tuned CNN).

Each member's score is put on one scale with the **valid** split of the data given at fitting:
``z = (score - member threshold) / std(member's valid scores)``, so every member calls "fake" at ``z >= 0`` and
weighs in by how far it is from its own boundary, in units of its own spread; the ensemble's score is the mean
``z`` (threshold 0). Nothing is fitted on train, nothing is read from test.

The folder holds ``meta.json`` and ``ensemble.json`` (the members - their folders and the sha256 of their
artifacts - and their scales, with the sealed copy of the metadata). Loading refuses an ensemble whose member
folder changed since (another sha256), in one line. Members are loaded through :func:`featlab.load`, once each.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from featlab import __version__
from featlab.core.errors import FeatlabError
from featlab.core.versions import library_versions, utc_now
from featlab.data.perturb import Perturbation
from featlab.detectors.base import Detector, LoadOptions, Scored, SplitScores, load
from featlab.detectors.modelfile import (
    check_sealed,
    read_verified_artifact,
    refuse_existing_model,
    save_new_model_folder,
)
from featlab.features.specs import Preprocessing

ARTIFACT = "ensemble.json"


class EnsembleDetector(Detector):
    """Mean of the members' standardised scores (see module docstring)."""

    writes_to_workspace = True  # when a member does (an SVM caches embeddings); harmless otherwise

    def __init__(self, folder: Path, meta: dict, members: list[Detector], scales: list[float],
                 options: LoadOptions) -> None:
        super().__init__(folder, meta, 0.0, "mean_z", options.workspace, members[0].device)
        self.members, self.scales = members, scales

    @property
    def prep(self) -> Preprocessing:
        geometry = {(m.prep.resize, m.prep.crop, m.prep.resize_mode, m.prep.interpolation) for m in self.members}
        if len(geometry) > 1:
            raise FeatlabError(f"{self.name}: its members cut different views out of an image, so it has no single "
                               "pixel input (score files with score_paths / featlab predict instead)")
        return self.members[0].prep

    def combine(self, member_scores: list[np.ndarray]) -> np.ndarray:
        """Members' scores (one array each) -> ensemble scores."""
        z = [(np.asarray(s, float) - m.threshold) / scale for s, m, scale in zip(member_scores, self.members, self.scales)]
        return np.mean(z, axis=0)

    def score(self, pixels: torch.Tensor) -> np.ndarray:
        _ = self.prep  # refuses members that cut different views
        return self.combine([m.score(pixels) for m in self.members])

    def score_paths(self, manifest: pd.DataFrame, perturbation: Perturbation | None = None, ray: str | None = None,
                    batch_size: int = 32, progress: bool = False) -> Scored:
        started = time.perf_counter()
        parts = [m.score_paths(manifest, perturbation, ray, batch_size, progress) for m in self.members]
        reasons = [next((r for r in why if r), "") for why in zip(*(p.reasons for p in parts))]
        return Scored(self.combine([p.scores for p in parts]), reasons, time.perf_counter() - started)

    def describe(self) -> dict:
        described = [m.describe() for m in self.members]
        return {**super().describe(), "backbone": " + ".join(d["backbone"] for d in described),
                "weights": "; ".join(f"{d['name']}: {d['weights']}" for d in described),
                "pretrained": all(d.get("pretrained", False) for d in described),
                "params": {"members": self.meta["members"], "rule": self.meta["rule"]},
                "seed": int(self.meta["seed"])}

    def costs(self, scored: SplitScores, ray: str | None = None) -> dict:
        return {"train_seconds": float(sum(m.meta.get("train_seconds", 0.0) for m in self.members)),
                "inference_images_per_s": float(scored.attempted / scored.seconds) if scored.seconds > 0 else None,
                "inference_note": "end to end: every member scores every image",
                "model_bytes": int(sum(m.meta["bytes"] for m in self.members) + self.meta["bytes"]),
                "parameters": int(sum(int(m.meta.get("parameters", 0) or 0) for m in self.members))}


RULE = "mean over members of (score - member threshold) / std of the member's valid-split scores; fake at >= 0"


def fit_ensemble(members: list[Detector], data_root: str | os.PathLike, workspace, name: str | None = None,
                 force: bool = False) -> EnsembleDetector:
    """Scale each member on the valid split of ``data_root`` and save the ensemble folder; its Detector."""
    if len(members) < 2:
        raise FeatlabError("an ensemble needs at least two models")
    if len({m.name for m in members}) < len(members):
        raise FeatlabError("an ensemble's members must be different models")
    folder = workspace.models / (name or f"ensemble-{'-'.join(m.name for m in members)}"[:80])
    refuse_existing_model(folder, force)  # before any scoring
    scored = [m.split_scores("valid", data_root) for m in members]
    if len({tuple(sorted(s.hashes)) for s in scored}) > 1:
        raise FeatlabError("the members could not score the same valid images (an image one of them skipped)")
    scales = []
    for member, s in zip(members, scored):
        spread = float(np.std(s.scores))
        if not spread > 0:
            raise FeatlabError(f"{member.name} gives every valid image the same score: it cannot be scaled")
        scales.append(spread)
    records = [{"name": m.name, "folder": str(m.folder.resolve()), "kind": m.kind, "sha256": m.meta["sha256"],
                "threshold": m.threshold, "scale": scale} for m, scale in zip(members, scales)]
    meta = {"kind": "ensemble", "featlab": __version__, "created": utc_now(), "members": records, "rule": RULE,
            "data_root": str(Path(data_root).resolve()), "n_train": 0, "n_valid": int(len(scored[0].scores)),
            "train_seconds": 0.0, "seed": 0, "versions": library_versions()}

    def write(handle, sealed: str) -> None:
        handle.write(json.dumps({"members": records, "featlab_meta": sealed}, sort_keys=True).encode())

    save_new_model_folder(folder, ARTIFACT, write, meta, force=force)
    return EnsembleDetector(folder, meta, members, scales, LoadOptions(workspace, "auto"))


def load_ensemble(folder: Path, meta: dict, options: LoadOptions) -> EnsembleDetector:
    """The ``ensemble`` loader of :data:`featlab.detectors.base.KINDS`: members loaded once each, checked unchanged."""
    artifact, data = read_verified_artifact(folder, meta)
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise FeatlabError(f"{artifact} is not an ensemble file; refusing the folder") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("members"), list):
        raise FeatlabError(f"{artifact} is not an ensemble file; refusing the folder")
    check_sealed(folder, meta, payload.get("featlab_meta"))
    members, scales = [], []
    for record in meta["members"]:
        member = load(record["folder"], options.workspace, device=options.device, trust_pickle=options.trust_pickle)
        if member.meta["sha256"] != record["sha256"]:
            raise FeatlabError(f"{folder.name}: member {record['name']} changed since the ensemble was fitted "
                               "(its artifact has another sha256); fit the ensemble again")
        members.append(member)
        scales.append(float(record["scale"]))
    return EnsembleDetector(folder, meta, members, scales, options)
