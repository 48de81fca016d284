"""Under attack: white-box L-infinity attacks on saved models, transfer between families, robust figures.

The attacks come from ``torchattacks`` (FGSM, PGD): small, pure PyTorch, maintained, and it
attacks any ``nn.Module`` - which is what both families become here. A CNN is attacked through
its own network; an SVM through its differentiable torch copy (:class:`featlab.detectors.detector.TorchPipeline`:
backbone with its preprocessing -> StandardScaler -> PCA -> SVM decision function), while its
success is measured with the real detector (the same scoring path as ``featlab evaluate``). We
chose torchattacks over adversarial-robustness-toolbox because ART's scikit-learn wrappers attack
the classifier on the embeddings, not on the pixels through the backbone, and its PyTorch wrapper
would add a second copy of the model plumbing for no gain.

Perturbations live in pixel space: the adversarial image is rounded to uint8 and clipped to the
budget around the original (``|adv - x| <= eps`` holds after rounding), so it is an image a user
could save. Success is also measured after a PNG round trip (lossless: identical) and after JPEG
quality 90. Attacks run on the model's input (its view of the image).
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from featlab.core.errors import FeatlabError
from featlab.core.metrics import binary_metrics
from featlab.detectors.adversarial import ATTACKS, BinaryLogits, attack_batch, eps_levels, parse_eps  # noqa: F401 (CLI)
from featlab.detectors.base import Detector, load


def pixel_logits(detector: Detector) -> BinaryLogits:
    """The detector's differentiable copy as a two-logit classifier of [0, 1] pixels, in eval mode."""
    return BinaryLogits(detector.differentiable(), detector.threshold, detector.score_kind == "p_fake").to(
        detector.device).eval()


def roundtrip(images: torch.Tensor, fmt: str, quality: int = 90) -> torch.Tensor:
    """Save each uint8 image as PNG or JPEG in memory and decode it again."""
    out = []
    for image in images:
        buffer = io.BytesIO()
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        pil.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
        buffer.seek(0)
        out.append(torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy()).permute(2, 0, 1))
    return torch.stack(out)


def _score(detector: Detector, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([detector.score(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


@dataclass
class AttackSettings:
    """What ``featlab attack`` does; every field is recorded in ``attack.json``.

    Parameters
    ----------
    attack : ``fgsm`` or ``pgd``.
    eps : L-infinity budgets as fractions of the pixel range (0 is the clean row).
    steps, restarts : PGD iterations and random restarts.
    n_images : size of the seeded, class-balanced subset of the split.
    attack_reals : also push the reals towards "fake" (default: only the fakes are attacked).
    split, seed, batch_size : as usual.
    """

    attack: str = "pgd"
    eps: list[float] = field(default_factory=lambda: [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255])
    steps: int = 10
    restarts: int = 1
    n_images: int = 200
    attack_reals: bool = False
    split: str = "test"
    seed: int = 0
    batch_size: int = 16

    def describe(self, eps: float | None = None) -> str:
        """The attack in words, for every result line: ``PGD L-inf eps 4/255, 10 steps, 1 restart, fakes only``."""
        budget = f" eps {eps_levels(eps)}/255" if eps is not None else ""
        steps = f", {self.steps} steps, {self.restarts} restart{'s' if self.restarts != 1 else ''}" \
            if self.attack == "pgd" else ""
        return f"{self.attack.upper()} L-inf{budget}{steps}, {'reals and fakes' if self.attack_reals else 'fakes only'}"


def subset(manifest: pd.DataFrame, n_images: int, seed: int) -> pd.DataFrame:
    """A seeded subset with half reals and half fakes (or all, when fewer)."""
    parts = [rows.sample(n=min(len(rows), n_images // 2), random_state=seed) for _, rows in manifest.groupby("label")]
    return pd.concat(parts).sort_values("path").reset_index(drop=True)


def _metrics(labels: np.ndarray, scores: np.ndarray, clean: np.ndarray, threshold: float) -> dict:
    m = binary_metrics(labels, scores, threshold)
    caught = (labels == 1) & (clean >= threshold)
    flipped = caught & (scores < threshold)
    return {"roc_auc": m["roc_auc"], "accuracy": m["accuracy"], "fake_accuracy": m["fake_accuracy"],
            "real_accuracy": m["real_accuracy"],
            "success_rate": float(flipped.sum() / caught.sum()) if caught.any() else float("nan")}


def run_attack(
    models: list[Detector | str | os.PathLike], data_root: str | os.PathLike, out: str | os.PathLike,
    settings: AttackSettings | None = None, device: str = "auto", progress=print,
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Attack each model on a subset of a split; score in memory, after PNG and after JPEG q90; transfer
    every model's adversarials to the other models. Writes attack.{md,json,html} and example triples."""
    from featlab.core.versions import hardware, library_versions, utc_now
    from featlab.data.dataset import scan_dataset
    from featlab.reports.report import is_synthetic

    settings = settings or AttackSettings()
    if settings.attack not in ATTACKS:
        raise FeatlabError(f"attack must be one of {', '.join(ATTACKS)}")
    detectors = [m if isinstance(m, Detector) else load(m, device=device) for m in models]
    for detector in detectors:  # before any image is read
        detector.require_gradients("a white-box attack")
    root, out = Path(data_root), Path(out)
    manifest = scan_dataset(root, check_images=False)
    rows = manifest[(manifest.split == settings.split) & (manifest.status == "ok")]
    if rows.empty:
        raise FeatlabError(f"{root}: split {settings.split!r} holds no images")
    rows = subset(rows, settings.n_images, settings.seed)
    from featlab.data.dataset import load_rgb

    labels = rows.label.to_numpy()
    images = {d.name: torch.stack([d.prep.prepare(load_rgb(p)) for p in rows.path]) for d in detectors}
    clean = {d.name: _score(d, images[d.name]) for d in detectors}
    records, adversarials, examples = [], {}, {}
    for detector in detectors:
        x = images[detector.name]
        model = pixel_logits(detector)
        target = torch.as_tensor(labels)
        attacked = np.ones(len(rows), bool) if settings.attack_reals else labels == 1
        for eps in settings.eps:
            started = time.perf_counter()
            adv = x.clone()
            for i in range(0, int(attacked.sum()), settings.batch_size):
                idx = np.flatnonzero(attacked)[i:i + settings.batch_size]
                adv[idx] = attack_batch(model, x[idx], target[idx], eps, settings.attack, settings.steps,
                                        settings.restarts, settings.seed)
            seconds = time.perf_counter() - started
            adversarials[(detector.name, eps)] = adv
            for stage, batch in (("in memory (uint8)", adv), ("after PNG", roundtrip(adv, "PNG")),
                                 ("after JPEG q90", roundtrip(adv, "JPEG"))):
                scores = _score(detector, batch)
                records.append({"model": detector.name, "family": detector.kind, "scored_by": detector.name,
                                "eps": eps, "eps_levels": eps_levels(eps), "stage": stage, "seconds": seconds,
                                "linf_levels": int((adv.int() - x.int()).abs().max()),
                                **_metrics(labels, scores, clean[detector.name], detector.threshold)})
            progress(f"{detector.name} {settings.describe(eps)}: ROC-AUC {records[-3]['roc_auc']:.3f}, success "
                     f"{records[-3]['success_rate']:.2f} ({seconds:.1f} s)")
        fakes = np.flatnonzero(labels == 1)[:3]
        examples[detector.name] = (x[fakes], adversarials[(detector.name, max(settings.eps))][fakes])
    # transfer: adversarials crafted on one model, scored by another that sees the same input geometry
    for source in detectors:
        for other in detectors:
            if other is source:
                continue
            if source.prep.crop != other.prep.crop or images[source.name].shape != images[other.name].shape or \
                    not torch.equal(images[source.name], images[other.name]):
                progress(f"transfer {source.name} -> {other.name} ({settings.describe()}): skipped (different "
                         "input views)")
                continue
            for eps in settings.eps:
                scores = _score(other, adversarials[(source.name, eps)])
                records.append({"model": source.name, "family": source.kind, "scored_by": other.name, "eps": eps,
                                "eps_levels": eps_levels(eps), "stage": "transfer (uint8)", "seconds": 0.0,
                                "linf_levels": None, **_metrics(labels, scores, clean[other.name], other.threshold)})
    table = pd.DataFrame(records)
    context = {"data": str(root.resolve()), "split": settings.split, "n_images": int(len(rows)),
               "n_fake": int(labels.sum()), "synthetic": is_synthetic(root), "settings": asdict(settings),
               "models": {d.name: {"kind": d.kind, "path": str(d.folder.resolve()), "sha256": d.meta["sha256"]}
                          for d in detectors},
               "library": "torchattacks " + _version("torchattacks"), "created": utc_now(), "hardware": hardware(),
               "versions": library_versions()}
    return table, write_attack_report(table, examples, context, out)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def _triples_png(original: torch.Tensor, adversarial: torch.Tensor, path: Path, amplify: int = 20) -> Path:
    """Rows of (original | perturbation x amplify, centred on grey | adversarial)."""
    rows = []
    for a, b in zip(original, adversarial):
        delta = (b.int() - a.int()) * amplify + 128
        rows.append(torch.cat([a, delta.clamp(0, 255).to(torch.uint8), b], dim=2))
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    Image.fromarray(grid).save(path)
    return path


def write_attack_report(table: pd.DataFrame, examples: dict, context: dict, out: Path) -> dict[str, Path]:
    """attack.md, attack.html (table + example triples, self-contained) and attack.json."""
    from featlab.reports.report import write_table_report

    out.mkdir(parents=True, exist_ok=True)
    s = context["settings"]
    head = (f"Data: {context['data']} ({context['split']}, seeded subset of {context['n_images']} images, "
            f"{context['n_fake']} fakes{', SYNTHETIC' if context['synthetic'] else ''}). Attack: {s['attack']} "
            f"({context['library']}), L-inf, steps {s['steps']}, restarts {s['restarts']}, "
            f"{'reals and fakes' if s['attack_reals'] else 'fakes only'} attacked; seed {s['seed']}. Success rate: "
            "share of the fakes caught clean that the attack turns into 'real'.")
    shown = table[["model", "scored_by", "stage", "eps_levels", "roc_auc", "accuracy", "fake_accuracy",
                   "success_rate", "seconds"]].rename(columns={"eps_levels": "eps (/255)"})
    pictures = [(f"{name} at the largest eps: original | perturbation x20 | adversarial",
                 _triples_png(original, adversarial, out / f"examples-{name[:60]}.png"))
                for name, (original, adversarial) in examples.items()]
    return write_table_report(out, "attack", head, shown, pictures, {**context, "rows": table.to_dict(orient="records")})
