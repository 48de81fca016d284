"""``featlab export``: a whole detector as one ONNX file, and that file loaded back as a Detector.

The graph goes from **uint8 pixels in the model's view** (N, 3, crop, crop), RGB - what
``preprocessing.to_uint8`` cuts out of a decoded image - to the featlab score: normalisation, the backbone with
the recipe's stages and pooling, then StandardScaler -> PCA -> SVM (the fitted pipeline's torch copy,
:class:`~featlab.detectors.torchcopy.TorchPipeline`, in float64) or the CNN's head. It is exported from the very
module ``explain`` and ``attack`` use (:meth:`Detector.differentiable`), so it is the detector, not a re-implementation.
The file's metadata (``featlab`` key, JSON) records the threshold, score kind, preprocessing (the resize and crop to
do before the graph), the source folder's sha256, weights and data.

Loading an exported file (``featlab.load("detector.onnx")``, ``featlab predict``, ``featlab serve``) reads it once,
hashes it, and gives onnxruntime the bytes (a graph that points at external data files cannot reach the disk
that way); a file without featlab's metadata is refused in one line. Kinds with no differentiable form (one-class,
autoencoder, ensemble) are refused at export, in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from featlab import __version__
from featlab.core.errors import FeatlabError
from featlab.core.fileio import atomic_write
from featlab.core.versions import hardware
from featlab.data.perturb import Perturbation
from featlab.detectors.base import Detector, LoadOptions, Scored, SplitScores
from featlab.features.specs import Preprocessing

FORMAT = 1
METADATA_KEY = "featlab"
INPUT, OUTPUT = "pixels", "score"


class _Exported(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module(pixels.float()).double()


def export_onnx(detector: Detector, out: str | os.PathLike, opset: int = 17) -> Path:
    """Write ``detector`` as one ONNX graph (uint8 pixels -> score, float64) with featlab's metadata; atomic."""
    import onnx

    detector.require_gradients("an ONNX export (it exports the detector's torch form)")
    module = _Exported(detector.differentiable()).eval()
    prep = detector.prep
    example = torch.zeros(2, 3, prep.crop, prep.crop, dtype=torch.uint8)
    buffer = __import__("io").BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in favour of one needing onnxscript
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "n"}, OUTPUT: {0: "n"}})
    graph = onnx.load_from_string(buffer.getvalue())
    described = detector.describe()
    record = {
        "format": FORMAT, "featlab": __version__, "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input": "uint8 NCHW RGB pixels in the model's view: decode, then resize and centre-crop as 'preprocessing' "
                 "says (featlab.features.specs.Preprocessing.to_uint8); normalisation is inside the graph",
        "preprocessing": prep.as_dict(), "threshold": detector.threshold, "score_kind": detector.score_kind,
        "source": {"name": detector.name, "kind": detector.kind, "sha256": detector.meta["sha256"],
                   "backbone": described.get("backbone"), "weights": described.get("weights"),
                   "pretrained": described.get("pretrained"), "data_root": detector.trained_on,
                   "n_train": detector.meta.get("n_train"), "n_valid": detector.meta.get("n_valid"),
                   "seed": detector.meta.get("seed"), "train_seconds": detector.meta.get("train_seconds", 0.0),
                   "parameters": int(sum(p.numel() for p in module.parameters()))},
    }
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(record, sort_keys=True)
    graph.producer_name, graph.producer_version = "featlab", __version__
    out = Path(out)
    atomic_write(out, lambda handle: handle.write(graph.SerializeToString()))
    return out


def quantize_int8(detector: Detector, fp32: str | os.PathLike, out: str | os.PathLike, data_root: str | os.PathLike,
                  calibration_images: int = 128, seed: int = 0) -> dict:
    """Static int8 quantisation (onnxruntime, QDQ, per channel, 7-bit weights) of an exported graph's convolutions,
    calibrated on a seeded, class-balanced sample of ``data_root``'s **train** images; the SVM / head stays in float.
    Weights use 7 of their 8 bits so that CPUs without VNNI do not saturate (see the comment below). Returns the
    measured cost: valid ROC-AUC of both graphs on ``data_root``'s valid split and their speed on the same images,
    also recorded in the file's metadata (key ``featlab``, entry ``quantization``)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from featlab.core.metrics import binary_metrics
    from featlab.data.dataset import load_rgb, scan_dataset

    manifest = scan_dataset(data_root, check_images=False)
    ok = manifest[manifest.status == "ok"]
    train, valid = ok[ok.split == "train"], ok[ok.split == "valid"]
    if train.empty or valid.empty:
        raise FeatlabError(f"{data_root}: int8 calibration needs train images and a valid split to measure its cost")
    per_class = max(1, calibration_images // 2)
    sample = train.groupby("label", group_keys=False).apply(
        lambda rows: rows.sample(min(per_class, len(rows)), random_state=seed))
    prep = detector.prep
    pixels = [prep.prepare(load_rgb(p)).numpy() for p in sample.path]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT: np.stack(pixels[i:i + 16])} for i in range(0, len(pixels), 16)])

        def get_next(self):
            return next(self.batches, None)

    import logging

    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.INFO)  # onnxruntime's quantiser logs every scale it adjusts on the root logger
        prepared, quantized = Path(scratch) / "pre.onnx", Path(scratch) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # reduce_range: 7-bit weights. x86 CPUs without VNNI (AVX2, AVX-512F) run u8 x s8 convolutions with
        # VPMADDUBSW, whose 16-bit pair sums saturate with full-range weights; measured on a 2-core AMD EPYC
        # (Zen 3, no VNNI) with the default SVM: valid ROC-AUC cost 0.102 with 8-bit weights, 0.006 with 7-bit.
        # The file is deployed on CPUs we do not know, so it is quantised to run correctly on all of them.
        quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv"])
        graph = onnx.load(str(quantized))
    logging.disable(logging.NOTSET)
    record = json.loads(next(p.value for p in onnx.load(str(fp32)).metadata_props if p.key == METADATA_KEY))
    atomic_write(out, lambda handle: handle.write(graph.SerializeToString()))
    cost = {}
    labels = valid.label.to_numpy()
    for name, path in (("fp32", Path(fp32)), ("int8", Path(out))):
        scorer = load_onnx_file(path, LoadOptions(detector.workspace))
        started = time.perf_counter()
        scored = scorer.score_paths(valid)
        cost[f"{name}_seconds"] = time.perf_counter() - started
        good = ~np.isnan(scored.scores)
        cost[f"valid_roc_auc_{name}"] = binary_metrics(labels[good], scored.scores[good], scorer.threshold)["roc_auc"]
    batch = torch.stack([prep.prepare(load_rgb(p)) for p in valid.path[:64]])
    for name, path in (("fp32", Path(fp32)), ("int8", Path(out))):
        scorer = load_onnx_file(path, LoadOptions(detector.workspace))
        scorer.score(batch[:8])  # warm-up
        started = time.perf_counter()
        for _ in range(5):
            scorer.score(batch)
        cost[f"{name}_forward_seconds"] = (time.perf_counter() - started) / 5
    cost["forward_speed_ratio"] = cost["fp32_forward_seconds"] / cost["int8_forward_seconds"]
    cost |= {"valid_images": int(len(valid)), "calibration_images": int(len(sample)), "seed": seed,
             "speed_ratio": cost["fp32_seconds"] / cost["int8_seconds"],
             "roc_auc_difference": (cost["valid_roc_auc_fp32"] - cost["valid_roc_auc_int8"])
             if cost["valid_roc_auc_fp32"] is not None and cost["valid_roc_auc_int8"] is not None else None,
             "quantized": "Conv weights int8 per channel in 7 bits (reduce_range: no saturation on CPUs without "
                          "VNNI), activations uint8 (QDQ, MinMax), the rest float",
             "measured_on": hardware()}  # speed and cost depend on the CPU's int8 instructions
    record["quantization"] = cost
    for entry in graph.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = json.dumps(record, sort_keys=True)
            break
    else:
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(record, sort_keys=True)
    atomic_write(out, lambda handle: handle.write(graph.SerializeToString()))
    return cost


class OnnxFileDetector(Detector):
    """An exported detector run by onnxruntime (kind ``onnx``; the source's kind is in ``meta['source']``)."""

    def __init__(self, path: Path, meta: dict, session, options: LoadOptions) -> None:
        super().__init__(path, meta, meta["threshold"], meta["score_kind"], options.workspace, torch.device("cpu"))
        self.session = session
        self._prep = Preprocessing.from_dict(meta["preprocessing"])

    @property
    def name(self) -> str:
        return self.folder.stem

    @property
    def prep(self) -> Preprocessing:
        return self._prep

    @property
    def trained_on(self) -> str:
        return str(self.meta["source"].get("data_root") or "")

    def score(self, pixels: torch.Tensor) -> np.ndarray:
        batch = np.ascontiguousarray(pixels.cpu().numpy().astype(np.uint8))
        return np.asarray(self.session.run([OUTPUT], {INPUT: batch})[0], dtype=np.float64).reshape(-1)

    def score_paths(self, manifest: pd.DataFrame, perturbation: Perturbation | None = None, ray: str | None = None,
                    batch_size: int = 32, progress: bool = False) -> Scored:
        from torch.utils.data import DataLoader

        from featlab.features.runtime import ImageTensors, collate_images

        if ray is not None:
            raise FeatlabError("an exported ONNX detector scores locally, not on Ray Data")
        usable = (manifest.status == "ok").to_numpy()
        values = np.full(len(manifest), np.nan)
        reasons = list(manifest.reason.fillna("").astype(str))
        started = time.perf_counter()
        positions = np.flatnonzero(usable)
        paths = list(manifest.path[usable])
        perturbation = None if perturbation is None or perturbation.is_identity else perturbation
        loader = DataLoader(ImageTensors(paths, self.prep, perturbation), batch_size=batch_size, num_workers=0,
                            collate_fn=collate_images)
        for indices, batch, why in loader:
            good = [k for k, reason in enumerate(why) if not reason]
            scores = self.score(batch[good]) if good else []
            for k, i in enumerate(indices.tolist()):
                if why[k]:
                    reasons[positions[i]] = why[k]
            for k, value in zip(good, scores):
                values[positions[int(indices[k])]] = value
        return Scored(values, reasons, time.perf_counter() - started)

    def describe(self) -> dict:
        source = self.meta["source"]
        return {"kind": "onnx", "name": self.name, "path": str(self.folder.resolve()), "sha256": self.meta["sha256"],
                "backbone": str(source.get("backbone")), "weights": str(source.get("weights")),
                "pretrained": bool(source.get("pretrained")), "exported_from": source,
                "seed": int(source.get("seed") or 0)}

    def costs(self, scored: SplitScores, ray: str | None = None) -> dict:
        return {"train_seconds": float(self.meta["source"].get("train_seconds") or 0.0),
                "inference_images_per_s": float(scored.attempted / scored.seconds) if scored.seconds > 0 else None,
                "inference_note": "end to end (decode + onnxruntime, CPU) of the exported graph",
                "model_bytes": int(self.meta["bytes"]), "parameters": int(self.meta["source"].get("parameters") or 0)}


def load_onnx_file(path: str | os.PathLike, options: LoadOptions) -> OnnxFileDetector:
    """An exported featlab ONNX file as a Detector (read once; refused in one line when it is not one)."""
    import onnxruntime as ort

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FeatlabError(f"cannot read {path}: {error.strerror}") from None
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime parses hostile input: any failure is a refusal
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise FeatlabError(f"{path} is not an ONNX model onnxruntime can load ({first})") from None
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    try:
        record = json.loads(raw) if raw else None
    except (json.JSONDecodeError, RecursionError):
        record = None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("source"), dict):
        raise FeatlabError(f"{path} is not a featlab export (no '{METADATA_KEY}' metadata of format {FORMAT}); refusing it")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT] or [o.name for o in outputs] != [OUTPUT] or inputs[0].type != "tensor(uint8)":
        raise FeatlabError(f"{path}: its graph does not take uint8 '{INPUT}' to '{OUTPUT}' as featlab exports do")
    try:
        meta = {"kind": "onnx", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "artifact": path.name,
                "threshold": float(record["threshold"]), "score_kind": str(record["score_kind"]),
                "preprocessing": dict(record["preprocessing"]), "source": record["source"],
                "n_train": record["source"].get("n_train") or 0, "n_valid": record["source"].get("n_valid") or 0}
        Preprocessing(**meta["preprocessing"])
    except (KeyError, TypeError, ValueError) as error:
        raise FeatlabError(f"{path}: its featlab metadata is incomplete ({type(error).__name__}: {error})") from None
    return OnnxFileDetector(path, meta, session, options)
