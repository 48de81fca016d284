"""Why a model calls a face fake: heatmaps over the image, and a gallery page.

Methods (``method=``):

* ``gradcam`` / ``gradcam++`` (CNN models): Grad-CAM and Grad-CAM++ from the ``grad-cam``
  package (pytorch-grad-cam) on the deepest stage the model's head sees (:func:`cam_layer`),
  for the "fake" output.
* ``occlusion`` (both families; the SVM's default): slide a patch filled with the image's mean
  colour (or a blurred copy) over the model's input, score every occluded copy through the normal
  scoring path in batches, and map the drop of the score: positive where hiding the region makes
  the face look less fake. Costs ``positions + 1`` forward passes per image.
* ``gradient`` (both families): the absolute gradient of the score with respect to the pixels,
  smoothed; for an SVM through its differentiable torch copy (:mod:`featlab.detectors.detector`).

Maps live in the model's input (its view of the image); :meth:`Preprocessing.view_box` places them on
the original image, whose parts outside the view are dimmed in the overlays.
"""

from __future__ import annotations

import html
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn

from featlab import CLASS_NAMES
from featlab.core.errors import BadImageError, FeatlabError
from featlab.core.fileio import atomic_write_text
from featlab.data.dataset import load_rgb
from featlab.detectors.detector import Detector

log = logging.getLogger(__name__)

METHODS = ("auto", "gradcam", "gradcam++", "occlusion", "gradient")
FILLS = ("mean", "blur")


@dataclass
class Explanation:
    """One image's score, verdict and heatmap (``heatmap`` is None when the file could not be read)."""

    path: str
    score: float
    verdict: str
    method: str
    heatmap: np.ndarray | None  # (H, W) over the model's input, >= 0, peak 1 (all zero: no evidence for "fake")
    box: tuple[float, float, float, float] | None  # the model's view in original image pixels: x0, y0, x1, y1
    reason: str = ""
    #: For a face model: the 2x3 map from the heatmap's (u, v) in [0, 1] to original image pixels (the aligned
    #: crop is rotated and scaled, so the view is not a box); ``box`` then bounds it. None: the view is ``box``.
    warp: np.ndarray | None = None

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        """A point of the heatmap, (u, v) in [0, 1] across and down, in original image pixels."""
        if self.warp is not None:
            x, y = self.warp @ np.array([u, v, 1.0])
            return float(x), float(y)
        x0, y0, x1, y1 = self.box
        return x0 + u * (x1 - x0), y0 + v * (y1 - y0)

    @property
    def peak(self) -> tuple[float, float] | None:
        """(x, y) of the heatmap's maximum in original image pixels."""
        if self.heatmap is None or self.box is None:
            return None
        row, col = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        h, w = self.heatmap.shape
        return self.to_image((col + 0.5) / w, (row + 0.5) / h)


def face_view(prep, image: Image.Image) -> tuple[torch.Tensor, tuple, np.ndarray]:
    """(model input, bounding box on the image, heatmap -> image map) for a model with a face stage: the
    heatmap lies over the backbone's view of the aligned crop, which lies rotated and scaled on the image."""
    face = prep.faces.main_face(image)
    cx0, cy0, cx1, cy1 = prep.view_box(face.crop.size)
    heat_to_crop = np.array([[cx1 - cx0, 0.0, cx0], [0.0, cy1 - cy0, cy0], [0.0, 0.0, 1.0]])
    crop_to_image = np.linalg.inv(np.vstack([face.to_crop, [0.0, 0.0, 1.0]]))
    warp = (crop_to_image @ heat_to_crop)[:2]
    corners = np.array([warp @ np.array([u, v, 1.0]) for u in (0, 1) for v in (0, 1)])
    box = (*corners.min(0), *corners.max(0))
    return prep.to_uint8(face.crop), tuple(float(c) for c in box), warp


def normalise_map(raw: np.ndarray) -> np.ndarray:
    """Keep the evidence for "fake" (positive part) and scale its peak to 1."""
    positive = np.clip(np.nan_to_num(raw.astype(np.float64)), 0, None)
    top = positive.max()
    return positive / top if top > 0 else positive


# --------------------------------------------------------------------------- methods


def cam_layer(detector: Detector) -> nn.Module:
    """The Grad-CAM target of a CNN: the deepest stage its head sees (``custom``: the last conv block)."""
    from featlab.features.backbones import get_spec
    from featlab.features.recipe import LayerTap

    model = detector.differentiable().networks[0]
    arch = detector.meta["arch"]
    if arch == "custom":
        return [m for m in model.features if isinstance(m, nn.ReLU)][-1]
    spec = get_spec(arch)
    features = model.features
    if isinstance(features, LayerTap):
        deepest = [name for name in spec.stages if name in features.recipe.layers][-1]
        return features.model.get_submodule(spec.stages[deepest][0])
    return features.get_submodule(spec.stages[list(spec.stages)[-1]][0])


def gradcam_maps(detector: Detector, batch_uint8: torch.Tensor, plus_plus: bool = False) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) maps for the "fake" output, (N, H, W) in [0, 1]."""
    if detector.kind != "cnn":
        raise FeatlabError("gradcam needs a CNN model; use --method occlusion or gradient for an SVM")
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    from featlab.features.backbones import BACKBONES

    network = detector.differentiable().networks[0]
    cam_class = GradCAMPlusPlus if plus_plus else GradCAM
    # the network's weights are frozen: the input carries the graph the CAM gradients flow through
    x = detector.prep.normalize(batch_uint8.to(detector.device)).requires_grad_(True)
    spec = BACKBONES.get(detector.meta["arch"])
    reshape = _tokens_to_grid if spec is not None and spec.tokens else None
    with torch.enable_grad(), cam_class(model=network, target_layers=[cam_layer(detector)],
                                        reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)] * len(x))
    return np.asarray(maps, dtype=np.float64)


def _tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """A ViT block's (N, 1 + h*w, C) tokens -> (N, C, h, w) patch maps (class token dropped), for Grad-CAM."""
    patches = tokens[:, 1:]
    side = int(round(patches.shape[1] ** 0.5))
    return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)


def gradient_maps(detector: Detector, batch_uint8: torch.Tensor, smooth: float = 4.0) -> np.ndarray:
    """|d score / d pixel| summed over channels and Gaussian-smoothed, (N, H, W)."""
    module = detector.differentiable()
    x = batch_uint8.to(detector.device, torch.float32).requires_grad_(True)
    with torch.enable_grad():
        module(x).sum().backward()
    grad = x.grad.abs().sum(1, keepdim=True)
    kernel = 2 * math.ceil(2 * smooth) + 1
    return TF.gaussian_blur(grad, [kernel, kernel], [smooth, smooth])[:, 0].cpu().numpy().astype(np.float64)


def occlusion_positions(size: int, patch: int, stride: int) -> list[int]:
    """Patch offsets covering ``0..size`` (the last one flush with the edge)."""
    if patch > size:
        raise FeatlabError(f"patch {patch} is larger than the model's input ({size} px)")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def occlusion_map(detector: Detector, image_uint8: torch.Tensor, patch: int = 48, stride: int = 24,
                  fill: str = "mean", batch_size: int = 32) -> tuple[float, np.ndarray]:
    """(score of the image, map of the score's drop when each region is hidden), map (H, W) in score units."""
    if fill not in FILLS:
        raise FeatlabError(f"fill must be one of {', '.join(FILLS)}")
    if stride < 1 or patch < 1:
        raise FeatlabError("patch and stride must be positive")
    _, height, width = image_uint8.shape
    if fill == "mean":
        filler = image_uint8.float().mean(dim=(1, 2), keepdim=True).round().to(torch.uint8).expand_as(image_uint8)
    else:
        kernel = 2 * (patch // 4) + 1
        filler = TF.gaussian_blur(image_uint8.float()[None], [kernel, kernel])[0].round().clamp(0, 255).to(torch.uint8)
    boxes = [(y, x) for y in occlusion_positions(height, patch, stride) for x in occlusion_positions(width, patch, stride)]
    base = float(detector.score(image_uint8[None])[0])
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        batch = image_uint8[None].repeat(len(chunk), 1, 1, 1)
        for k, (y, x) in enumerate(chunk):
            batch[k, :, y:y + patch, x:x + patch] = filler[:, y:y + patch, x:x + patch]
        scores = detector.score(batch)
        for (y, x), s in zip(chunk, scores):
            total[y:y + patch, x:x + patch] += base - s
            count[y:y + patch, x:x + patch] += 1
    return base, total / np.maximum(count, 1)


def resolve_method(detector: Detector, method: str) -> str:
    """The method ``auto`` stands for on this detector; a method it cannot run is refused here, before any work."""
    if method not in METHODS:
        raise FeatlabError(f"method must be one of {', '.join(METHODS)}")
    if method == "auto":
        return "gradcam" if detector.kind == "cnn" else "occlusion"
    if method.startswith("gradcam") and detector.kind != "cnn":
        raise FeatlabError(f"{method} needs a CNN model; use --method occlusion or gradient for an SVM")
    if method != "occlusion":
        detector.require_gradients(f"--method {method}")
    return method



def _label(item) -> str:
    """A file's path, or ``<upload>`` for image bytes (the service explains uploads)."""
    return "<upload>" if isinstance(item, (bytes, bytearray, memoryview)) else str(item)


def explain_paths(
    detector: Detector, paths: list[str], method: str = "auto", patch: int = 48, stride: int = 24, fill: str = "mean",
    batch_size: int = 16,
) -> list[Explanation]:
    """Score and explain image files; unreadable files come back with a reason and no map."""
    method = resolve_method(detector, method)
    prep = detector.prep
    out: list[Explanation | None] = [None] * len(paths)
    decoded: list[tuple[int, torch.Tensor, tuple, np.ndarray | None]] = []
    for i, path in enumerate(paths):
        try:
            image = load_rgb(path)
            if prep.faces is not None:  # the map is computed on the aligned face and drawn back onto the image
                decoded.append((i, *face_view(prep, image)))
            else:
                decoded.append((i, prep.to_uint8(image), prep.view_box(image.size), None))
        except BadImageError as error:
            out[i] = Explanation(_label(path), float("nan"), "", method, None, None, str(error))
    for start in range(0, len(decoded), batch_size):
        chunk = decoded[start:start + batch_size]
        batch = torch.stack([t for _, t, _, _ in chunk])
        if method == "occlusion":
            results = [occlusion_map(detector, t, patch, stride, fill) for _, t, _, _ in chunk]
            scores, maps = [s for s, _ in results], [m for _, m in results]
        else:
            scores = detector.score(batch)
            maps = gradcam_maps(detector, batch, method == "gradcam++") if method.startswith("gradcam") \
                else gradient_maps(detector, batch)
        for (i, _, box, warp), score, raw in zip(chunk, scores, maps):
            verdict = CLASS_NAMES[int(score >= detector.threshold)]
            out[i] = Explanation(_label(paths[i]), float(score), verdict, method, normalise_map(raw), box, warp=warp)
    return out


# ---------------------------------------------------------------------------- output


def overlay(path: str, explanation: Explanation, alpha: float = 0.5, max_side: int = 320) -> Image.Image:
    """The original image with the heatmap (jet colours) over the model's view; outside the view dimmed."""
    from matplotlib import colormaps

    image = load_rgb(path)
    x0, y0, x1, y1 = explanation.box
    scale = min(1.0, max_side / max(image.size))
    shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    canvas = Image.blend(shown, Image.new("RGB", shown.size), 0.55)  # dim everything, then restore the view
    if explanation.warp is not None:  # an aligned face: warp the map (and its footprint) back onto the image
        colours = (colormaps["jet"](explanation.heatmap)[..., :3] * 255).astype(np.uint8)
        side = 256
        heat = Image.fromarray(colours).resize((side, side), Image.BILINEAR)
        heat_to_shown = np.vstack([scale * explanation.warp @ np.diag([1 / side, 1 / side, 1.0]), [0, 0, 1]])
        inverse = tuple(np.linalg.inv(heat_to_shown)[:2].reshape(-1))
        warped = heat.transform(shown.size, Image.Transform.AFFINE, inverse, Image.BILINEAR)
        footprint = Image.new("L", (side, side), 255).transform(shown.size, Image.Transform.AFFINE, inverse,
                                                                Image.BILINEAR)
        canvas.paste(Image.blend(shown, warped, alpha), (0, 0), footprint)
        return canvas
    box = tuple(round(v * scale) for v in (max(x0, 0), max(y0, 0), min(x1, image.width), min(y1, image.height)))
    if box[2] <= box[0] or box[3] <= box[1]:
        return shown
    colours = (colormaps["jet"](explanation.heatmap)[..., :3] * 255).astype(np.uint8)
    heat = Image.fromarray(colours).resize((round((x1 - x0) * scale), round((y1 - y0) * scale)), Image.BILINEAR)
    offset = (round(x0 * scale), round(y0 * scale))
    heat_full = Image.new("RGB", shown.size)
    heat_full.paste(heat, offset)
    region = Image.blend(shown, heat_full, alpha).crop(box)
    canvas.paste(region, box[:2])
    return canvas


def _card(explanation: Explanation, png: str | None, extra: str = "") -> str:
    name = html.escape(Path(explanation.path).name)
    if png is None:
        return f"<figure class='bad'><figcaption><b>{name}</b><br>not read: {html.escape(explanation.reason)}</figcaption></figure>"
    return (f"<figure><img src='{html.escape(png)}' alt='heatmap of {name}'><figcaption><b>{name}</b><br>"
            f"{html.escape(explanation.verdict)} · score {explanation.score:.3f}{html.escape(extra)}</figcaption></figure>")


PAGE_STYLE = ("body{font-family:system-ui,sans-serif;margin:24px;color:#222}figure{display:inline-block;margin:8px;"
              "vertical-align:top;width:330px}figure img{max-width:320px;border:1px solid #ccc}figcaption{font-size:13px}"
              "figure.bad{background:#fee;padding:8px}section{margin-bottom:24px}.note{color:#555;font-size:14px}")


def write_gallery(
    sections: list[tuple[str, list[Explanation], list[str]]], out: str | os.PathLike, title: str, note: str,
) -> Path:
    """Write one overlay PNG per explained image and ``index.html`` (sections of cards) into ``out``.

    ``sections``: (heading, explanations, caption extra per explanation).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts, rows, n = [], [], 0
    for heading, explanations, extras in sections:
        cards = []
        for explanation, extra in zip(explanations, extras):
            png = None
            if explanation.heatmap is not None:
                n += 1
                png = f"{n:04d}-{Path(explanation.path).stem[:60]}.png"
                tmp = out / (png + ".tmp.png")
                overlay(explanation.path, explanation).save(tmp)
                os.replace(tmp, out / png)
            peak = explanation.peak
            rows.append({"section": heading, "path": explanation.path, "score": explanation.score,
                         "verdict": explanation.verdict, "method": explanation.method, "png": png or "",
                         "peak_x": peak[0] if peak else np.nan, "peak_y": peak[1] if peak else np.nan,
                         "status": "ok" if png else "quarantined", "reason": explanation.reason})
            cards.append(_card(explanation, png, extra))
        parts.append(f"<section><h2>{html.escape(heading)}</h2>{''.join(cards) or '<p>none</p>'}</section>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p class='note'>{html.escape(note)}</p>"
            f"{''.join(parts)}</body></html>")
    table = out / "explanations.csv"
    pd.DataFrame(rows).to_csv(table.with_suffix(".tmp"), index=False)
    os.replace(table.with_suffix(".tmp"), table)
    atomic_write_text(out / "index.html", page)
    return out / "index.html"


def method_note(detector: Detector, method: str, patch: int, stride: int, fill: str) -> str:
    method = resolve_method(detector, method)
    what = {
        "gradcam": "Grad-CAM (pytorch-grad-cam) for the 'fake' output",
        "gradcam++": "Grad-CAM++ (pytorch-grad-cam) for the 'fake' output",
        "occlusion": f"occlusion: {patch} px patches ({fill} fill), stride {stride}; colour = drop of the score when hidden",
        "gradient": "|gradient of the score w.r.t. pixels|, smoothed",
    }[method]
    return (f"model {detector.name} ({detector.kind}, score {detector.score_kind}, fake at >= {detector.threshold:g}); "
            f"{what}. Red = most evidence for 'fake'; outside the model's view the image is dimmed.")


def explain_target(
    detector: Detector, paths: list[str], out: str | os.PathLike, method: str = "auto", patch: int = 48,
    stride: int = 24, fill: str = "mean",
) -> tuple[Path, list[Explanation], float]:
    """Explain files and write the gallery; returns (index.html, explanations, seconds spent explaining)."""
    start = time.perf_counter()
    explanations = explain_paths(detector, paths, method, patch, stride, fill)
    seconds = time.perf_counter() - start
    extras = [""] * len(explanations)
    index = write_gallery([("images", explanations, extras)], out, f"featlab explain: {detector.name}",
                          method_note(detector, method, patch, stride, fill))
    return index, explanations, seconds


def forward_passes(detector: Detector, method: str, n_images: int, patch: int, stride: int) -> int:
    """Forward passes an explanation run costs (the occlusion cost printed before it starts)."""
    method = resolve_method(detector, method)
    if method != "occlusion":
        return n_images
    size = detector.prep.crop
    per_image = len(occlusion_positions(size, patch, stride)) ** 2 + 1
    return n_images * per_image
