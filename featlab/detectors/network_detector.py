"""Detectors that are one network from pixels to the "fake" score (kinds ``cnn`` and ``ae``).

A fine-tuned CNN outputs a logit; an autoencoder's :class:`~featlab.detectors.autoencoder.AnomalyScore` outputs
its reconstruction error minus the one-class threshold fixed at training. Both call an image fake at a
score of 0 or more (:data:`NetworkDetector.THRESHOLD`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from featlab.core.errors import FeatlabError
from featlab.data.perturb import Perturbation
from featlab.detectors.base import Detector, LoadOptions, Scored, SplitScores
from featlab.features.runtime import PixelDetector
from featlab.features.specs import Preprocessing


class NetworkDetector(Detector):
    """A network (pixels -> (N, 1) score) loaded once, scored in fp32."""

    #: Where "fake" starts: a logit of 0 is p(fake) = 0.5; an autoencoder's score is already error - threshold.
    THRESHOLD = 0.0
    SCORE_KINDS = {"cnn": "logit", "ae": "anomaly"}

    def __init__(self, folder: Path, meta: dict, network: nn.Module, prep: Preprocessing, device: torch.device,
                 options: LoadOptions) -> None:
        super().__init__(folder, meta, self.THRESHOLD, self.SCORE_KINDS[meta["kind"]], options.workspace, device)
        self.network = network
        self._prep = prep
        self._differentiable: PixelDetector | None = None
        self._memo: dict[tuple[str, str], tuple[float, float]] = {}  # see score_paths

    @property
    def prep(self) -> Preprocessing:
        return self._prep

    def _retarget(self, stage) -> None:
        self._prep = self._prep.with_faces(stage)
        self._differentiable = None
        self._memo = {}  # another input, other scores

    def score(self, pixels: torch.Tensor) -> np.ndarray:
        self.network.eval()  # the differentiable copy shares this network: never score in train mode
        with torch.inference_mode():
            x = self.prep.normalize(pixels.to(self.device)).contiguous(memory_format=torch.channels_last)
            return self.network(x).float().view(-1).cpu().numpy().astype(np.float64)

    #: Scores this loaded model remembers (see :meth:`score_paths`); bounded, so a long-running service stays small.
    MEMO_LIMIT = 100_000

    def score_paths(self, manifest: pd.DataFrame, perturbation: Perturbation | None = None, ray: str | None = None,
                    batch_size: int = 32, progress: bool = False) -> Scored:
        """See :meth:`Detector.score_paths`. A loaded network never changes, so the score of an image (by content
        hash) under a perturbation is remembered: scoring the same split again (an ensemble scoring its members,
        evaluate after fit-ensemble) costs nothing. ``seconds`` counts remembered images at the time they took when
        they were scored, so reported throughput stays the measured one."""
        from featlab.detectors.cnn import score_images

        usable = (manifest.status == "ok").to_numpy().copy()  # what the scan quarantined (non-images, FIFOs): never opened
        values = np.full(len(manifest), np.nan)
        reasons = list(manifest.reason.fillna("").astype(str))
        started = time.perf_counter()
        perturbation = None if perturbation is None or perturbation.is_identity else perturbation
        condition = repr(sorted(perturbation.as_dict().items())) if perturbation is not None else ""
        hashes = (manifest.sha256.fillna("").astype(str).to_numpy() if "sha256" in manifest
                  else np.full(len(manifest), "", dtype=object))
        remembered_seconds = 0.0
        for position in np.flatnonzero(usable):
            hit = self._memo.get((hashes[position], condition)) if hashes[position] else None
            if hit is not None:
                values[position], took = hit
                remembered_seconds += took
                usable[position] = False
        if usable.any():
            paths = list(manifest.path[usable])
            if ray is None:
                got, why = score_images(self.network, self.prep, paths, batch_size, self.device, "fp32",
                                        perturbation=perturbation)
            elif perturbation is not None:
                raise FeatlabError("perturbed images are scored locally, not on Ray Data")
            else:
                from featlab.detectors.pixel import load_pixel_model
                from featlab.features.distributed import score_with_ray

                got, why = score_with_ray(paths, load_pixel_model, str(self.folder.resolve()), self.prep, ray,
                                          batch_size, want_cuda=self.device.type == "cuda")
            values[usable] = got
            for position, reason in zip(np.flatnonzero(usable), why):
                reasons[position] = reason
            took = (time.perf_counter() - started) / len(paths)
            for position in np.flatnonzero(usable):
                if hashes[position] and not np.isnan(values[position]) and len(self._memo) < self.MEMO_LIMIT:
                    self._memo[(hashes[position], condition)] = (float(values[position]), took)
        return Scored(values, reasons, time.perf_counter() - started + remembered_seconds)

    @property
    def has_gradients(self) -> bool:
        return self.kind == "cnn"

    def differentiable(self) -> PixelDetector | None:
        """The CNN itself in fp32 (shared with :meth:`score`); ``None`` for an autoencoder."""
        if not self.has_gradients:
            return None
        if self._differentiable is None:
            self._differentiable = self.frozen(PixelDetector(self.prep, [self.network.float()]))
        return self._differentiable

    def describe(self) -> dict:
        meta = self.meta
        return {**super().describe(), "backbone": meta["arch"], "weights": meta["weights_info"].get("source", "unknown"),
                "pretrained": bool(meta["weights_info"].get("pretrained")),
                "params": {"config": meta["config"], "best_epoch": meta["best_epoch"],
                           "best_valid_auc": meta.get("best_valid_auc")},
                "seed": int(meta["seed"])}

    def costs(self, scored: SplitScores, ray: str | None = None) -> dict:
        return {"train_seconds": float(self.meta.get("train_seconds", 0.0)),
                "inference_images_per_s": float(scored.attempted / scored.seconds) if scored.seconds > 0 else None,
                "inference_note": "end to end (decode + forward, batch 32, fp32) on "
                                  + (f"Ray Data ({ray})" if ray else str(self.device)),
                "model_bytes": int(self.meta["bytes"]), "parameters": int(self.meta["parameters"])}


def load_network_detector(folder: Path, meta: dict, options: LoadOptions) -> NetworkDetector:
    """The ``cnn`` / ``ae`` loader of :data:`featlab.detectors.base.KINDS`."""
    if meta["kind"] == "ae":
        from featlab.detectors.autoencoder import load_anomaly_scorer

        network, prep, meta, device = load_anomaly_scorer(folder, options.device, meta)
    else:
        from featlab.detectors.cnn import load_cnn

        network, prep, meta, device = load_cnn(folder, options.device, meta)
    return NetworkDetector(folder, meta, network, prep, device, options)


def train_cnn_detector(config, data_root, out, workspace, resume: bool = False, progress: bool = True,
                       echo=print) -> NetworkDetector:
    """Train (or resume) a CNN (:func:`featlab.detectors.cnn.train_cnn`) and return the Detector of its best
    epoch. The best weights are on disk only (training holds the last epoch's), so they are loaded once, verified."""
    from featlab.detectors.base import load
    from featlab.detectors.cnn import train_cnn

    folder = train_cnn(config, data_root, out, resume=resume, progress=progress, echo=echo)
    return load(folder, workspace, device=config.device)
