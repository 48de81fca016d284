"""Fine-tuned CNN baselines, trained on the same splits as the SVM pipeline.

Architectures: ``resnet18``, ``resnet50``, ``densenet121`` (torchvision; pretrained weights
through the same ``--weights`` rules as the backbones), ``resnet50-opennsfw`` (the offline
pretrained ResNet-50), and ``custom``: a small CNN trained from scratch::

    4 x [Conv3x3(c) -> BatchNorm -> ReLU -> MaxPool2x2], c = 32, 64, 128, 256
    -> global average pool -> Dropout(0.3) -> Linear(256 -> 1)

Every model ends in one logit (fake = positive) trained with BCE-with-logits.

Training writes, under the model folder: ``model.pt`` (best weights by valid ROC-AUC) with
``meta.json`` (its sha256), ``train/last.pt`` (the full training state after each epoch,
written atomically, for ``--resume``), ``history.csv`` and ``curves.png``. Data order and
augmentation draw from a generator seeded by (seed, epoch), so a resumed run sees exactly
the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import io
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFilter
from torch import nn
from torch.utils.data import DataLoader, Dataset

from featlab import LABELS, __version__
from featlab.core.errors import FeatlabError
from featlab.core.fileio import atomic_write, atomic_write_text, load_tensor_file
from featlab.core.metrics import binary_metrics
from featlab.core.versions import library_versions, utc_now
from featlab.data.dataset import load_rgb, scan_dataset
from featlab.data.faces import quarantine_faceless
from featlab.data.perturb import Perturbation
from featlab.detectors.configs import ARCHS, Augment, TrainConfig  # noqa: F401 - re-exported
from featlab.detectors.modelfile import (
    check_sealed,
    save_model_folder,
    update_model_meta,
    verified_artifact,
)
from featlab.features.backbones import BACKBONES, load_backbone, resolve_auto
from featlab.features.recipe import LayerTap, parse_recipe
from featlab.features.runtime import (
    ImageTensors,
    PixelDetector,
    autocast_context,
    collate_images,
    resolve_device,
    resolve_precision,
)
from featlab.features.specs import Preprocessing

log = logging.getLogger(__name__)

ARTIFACT = "model.pt"


class CustomCNN(nn.Module):
    """The small from-scratch CNN (see module docstring)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), dropout: float = 0.3) -> None:
        super().__init__()
        layers, channels = [], 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FineTuned(nn.Module):
    """A pretrained embedding network with a new one-logit head.

    ``standardize`` puts a BatchNorm1d before the linear layer: pooled statistics of several
    stages differ in scale by orders of magnitude, and the head must see them on one scale.
    """

    def __init__(self, features: nn.Module, dim: int, standardize: bool = False) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Sequential(nn.BatchNorm1d(dim), nn.Linear(dim, 1)) if standardize else nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


CUSTOM_PREPROCESSING = Preprocessing(resize=128, crop=128, mean=(127.5,) * 3, std=(127.5,) * 3)


def build_model(
    arch: str, weights: str, image_size: int | None = None, view: str | None = None, head_layers: str | None = "pool",
) -> tuple[nn.Module, Preprocessing, dict]:
    """(model, preprocessing, weights info) for an architecture.

    ``image_size`` overrides resize/crop; ``view`` (see :data:`featlab.features.specs.VIEWS`) the geometry,
    by default ``native`` (no resampling) for pretrained archs and ``crop`` for ``custom``.
    ``head_layers`` is what the new head sees: ``pool`` (the backbone's pooled output), ``auto``
    (the stages and pooling of the default feature recipe, as the SVM family) or stage names.
    """
    if arch not in ARCHS:
        raise FeatlabError(f"arch must be one of {', '.join(ARCHS)}")
    if arch == "custom":
        torch.manual_seed(0)
        model, prep = CustomCNN(), CUSTOM_PREPROCESSING
        info = {"source": "none (trained from scratch)", "fingerprint": "custom", "pretrained": False, "file": None}
    else:
        backbone = load_backbone(arch, weights)
        recipe = parse_recipe(backbone.spec, head_layers or "pool")
        if recipe.is_classic:
            model = FineTuned(backbone.model, BACKBONES[arch].embed_dim)
        else:
            model = FineTuned(LayerTap(backbone.model, backbone.spec, recipe), recipe.dim(backbone.spec), standardize=True)
        prep, info = backbone.preprocessing, backbone.weights
    if image_size:
        prep = Preprocessing(**{**asdict(prep), "resize": image_size, "crop": image_size})
    prep = prep.with_view(view or default_view(arch))
    return model, prep, info


def default_view(arch: str) -> str:
    """Pretrained archs see the image's own pixels (resampling smooths away generator traces);
    the small custom CNN sees the whole face resized to its 128 px input."""
    return "crop" if arch == "custom" else "native"


# ------------------------------------------------------------------------ data


class TrainImages(Dataset):
    """Decoded, augmented uint8 tensors; randomness from a per-item seed for exact resume."""

    def __init__(self, paths: list[str], labels: list[int], prep: Preprocessing, augment: Augment) -> None:
        self.paths, self.labels, self.prep, self.augment = paths, labels, prep, augment
        self.epoch_seed = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        rng = random.Random(self.epoch_seed * 1_000_003 + i)
        image = load_rgb(self.paths[i])  # train_cnn quarantined undecodable (and faceless) files beforehand
        if self.prep.faces is not None:
            image = self.prep.faces.main_face(image).crop  # the aligned face is what augmentation sees
        a = self.augment
        if a.blur_prob and rng.random() < a.blur_prob:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 3)))
        if a.jpeg_prob and rng.random() < a.jpeg_prob:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=rng.randint(30, 100))
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        if self.prep.resize_mode == "none":  # native view: a random crop-sized window, no resampling
            w, h = image.size
            side = self.prep.crop
            if min(w, h) > side:
                x, y = rng.randint(0, w - side), rng.randint(0, h - side)
                image = image.crop((x, y, x + side, y + side))
        elif a.crop_scale < 1:
            w, h = image.size
            s = rng.uniform(a.crop_scale, 1.0)
            cw, ch = max(1, int(w * s)), max(1, int(h * s))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            image = image.crop((x, y, x + cw, y + ch))
        if a.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensor = self.prep.to_uint8(image)
        if a.color_jitter:
            factors = [1 + rng.uniform(-a.color_jitter, a.color_jitter) for _ in range(2)]
            t = tensor.float() * factors[0]
            t = (t - t.mean()) * factors[1] + t.mean()
            tensor = t.clamp(0, 255).to(torch.uint8)
        return tensor, self.labels[i]


# -------------------------------------------------------------------- training


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if isinstance(model, FineTuned):
        # open_nsfw has its batch norm folded into the convolutions, so weight scales differ 1000-fold
        # between layers (first conv RMS 5e-4, late 1x1 convs 0.4): one Adam step size that suits the
        # head wipes out the first layers (measured: full fine-tuning at 1e-4 stays at chance). Each
        # pretrained tensor therefore gets a step proportional to its own magnitude.
        groups = [
            {"params": [p], "lr": config.backbone_lr_scale * max(float(p.detach().float().pow(2).mean().sqrt()), 1e-8)}
            for p in model.features.parameters()
        ]
        groups.append({"params": list(model.head.parameters()), "lr": config.lr})
    else:
        groups = [{"params": list(model.parameters()), "lr": config.lr}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    raise FeatlabError("optimizer must be adamw or sgd")


def _scheduler(config: TrainConfig, optimizer):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, config.epochs // 3), gamma=0.1)
    raise FeatlabError("schedule must be cosine or step")


def _set_frozen(model: nn.Module, frozen: bool, train_stages: int = 0, arch: str = "") -> None:
    """Freeze the pretrained backbone (head-only epochs), or train it: all of it, or with ``train_stages`` only what
    comes after its N-th last declared stage (the last N stages, and any layers behind them)."""
    if not isinstance(model, FineTuned):
        return
    trainable = _trainable_names(model, train_stages, arch) if train_stages and not frozen else None
    for name, p in model.features.named_parameters():
        p.requires_grad_(not frozen and (trainable is None or name in trainable))


def _trainable_names(model: FineTuned, train_stages: int, arch: str) -> set[str] | None:
    """Names (in ``model.features``) of the parameters registered after the module of the stage before the last
    ``train_stages`` declared stages, and after all of its submodules; None: every parameter."""
    stages = list(BACKBONES[arch].stages.values()) if arch in BACKBONES else []
    if train_stages >= len(stages):
        return None
    boundary = stages[-train_stages - 1][0]  # the submodule path of the last stage that stays frozen
    modules = list(model.features.named_modules())
    full = next((name for name, _ in modules if name == boundary or name.endswith("." + boundary)), None)
    if full is None:
        raise FeatlabError(f"{arch}: stage module {boundary!r} not found; cannot train only the last stages")
    ends = [i for i, (name, _) in enumerate(modules) if name == full or name.startswith(full + ".")]
    trainable = set()
    for module_name, module in modules[max(ends) + 1:]:
        for param_name, _ in module.named_parameters(recurse=False):
            trainable.add(f"{module_name}.{param_name}" if module_name else param_name)
    return trainable


class _Fp32WhenTraining:
    """Mixin for a depthwise convolution: under CPU autocast, a training step that back-propagates through it runs it
    in float32.

    PyTorch's CPU backward of depthwise convolutions in bfloat16 (channels_last) is 2-5x slower than in float32
    (measured on 2 Xeon cores: 266 vs 67 ms for 672 channels of 14 x 14, 5 x 5 kernel, batch 32), and it is where
    EfficientNet-Lite fine-tuning spends its time; evaluation and frozen layers keep the bfloat16 forward, which is the
    faster one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        needs_backward = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if self.training and needs_backward and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


_FP32_CLASSES: dict[type, type] = {}


def fp32_depthwise_training(model: nn.Module) -> int:
    """Make every depthwise ``Conv2d`` of ``model`` (timm's ``Conv2dSame`` included) train in float32 under CPU
    autocast (:class:`_Fp32WhenTraining`); parameters and state-dict keys are unchanged. Returns how many."""
    changed = 0
    for module in model.modules():
        cls = type(module)
        if isinstance(module, nn.Conv2d) and not isinstance(module, _Fp32WhenTraining) \
                and module.groups > 1 and module.groups == module.in_channels:
            if cls not in _FP32_CLASSES:
                _FP32_CLASSES[cls] = type(f"Fp32Training{cls.__name__}", (_Fp32WhenTraining, cls), {})
            module.__class__ = _FP32_CLASSES[cls]
            changed += 1
    return changed


def score_images(
    model: nn.Module, prep: Preprocessing, paths: list[str], batch_size: int, device: torch.device, precision: str,
    workers: int = 0, perturbation: Perturbation | None = None,
) -> tuple[np.ndarray, list[str]]:
    """(logit per image, reason per image: "" when decoded); ``perturbation`` is applied after decoding."""
    model.eval()
    scores = np.full(len(paths), np.nan, dtype=np.float64)
    reasons = [""] * len(paths)
    loader = DataLoader(ImageTensors(paths, prep, perturbation), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_images)
    with torch.inference_mode():
        for indices, batch, why in loader:
            x = prep.normalize(batch.to(device)).contiguous(memory_format=torch.channels_last)
            with autocast_context(precision, device):
                out = model(x).float().view(-1).cpu().numpy()
            for k, i in enumerate(indices.tolist()):
                if why[k]:
                    reasons[i] = why[k]
                else:
                    scores[i] = out[k]
    return scores, reasons


def train_cnn(config: TrainConfig, data_root: str | os.PathLike, out: str | os.PathLike, resume: bool = False,
              progress: bool = True, stop_after: int | None = None,
              echo: Callable[[str], None] | None = print) -> Path:
    """Train (or resume) a CNN baseline; returns the model folder.

    ``progress`` shows a bar per epoch; ``echo`` receives one summary line per epoch (None: silent).

    ``stop_after`` ends the run after that many epochs of this call (used to test resume).
    """
    validate_config(config)
    if config.arch == "auto":
        from dataclasses import replace

        config = replace(config, arch=resolve_auto("auto")[0])
    out = Path(out)
    state_file = out / "train" / "last.pt"
    if out.joinpath("meta.json").exists() and not resume and state_file.exists():
        raise FeatlabError(f"{out} already holds a training run; resume it (resume=True, CLI --resume) or choose "
                           "another output folder")
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    # Decode everything once up front: a broken file must be left out, not trained on as a blank image.
    manifest = quarantine_faceless(scan_dataset(data_root, check_images=True), config.faces, ("train", "valid"))
    for row in manifest[manifest.status != "ok"].itertuples():
        log.warning("quarantined %s: %s", row.path, row.reason)
    splits = {s: manifest[(manifest.split == s) & (manifest.status == "ok")] for s in ("train", "valid")}
    if splits["train"].empty or splits["train"].label.nunique() < 2:
        raise FeatlabError(f"{data_root}: the train split needs real and fake images")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    model, prep, weights_info = build_model(config.arch, config.weights, config.image_size, config.view,
                                            config.head_layers)
    prep = prep.with_faces(config.faces)
    model = model.to(device, memory_format=torch.channels_last)
    if device.type == "cpu" and precision == "bf16":
        fp32_depthwise_training(model)
    optimizer = _optimizer(config, model)
    scheduler = _scheduler(config, optimizer)
    history: list[dict] = []
    best_auc, bad_epochs, start_epoch, train_seconds = -1.0, 0, 0, 0.0
    if resume:
        if not state_file.exists():
            raise FeatlabError(f"nothing to resume: {state_file} does not exist")
        state = _load_training_state(state_file, config, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best_auc, bad_epochs = state["history"], state["best_auc"], state["bad_epochs"]
        start_epoch, train_seconds = state["epoch"] + 1, state["train_seconds"]
        torch.set_rng_state(state["torch_rng"])  # dropout draws continue exactly
        log.info("resuming %s at epoch %d", out, start_epoch + 1)

    train = TrainImages(list(splits["train"].path), list(splits["train"].label), prep, config.augment)
    loss_fn = nn.BCEWithLogitsLoss()
    attacker = None
    if config.adversarial:
        from featlab.detectors.adversarial import BinaryLogits, attack_batch

        attacker = BinaryLogits(PixelDetector(prep, [model]))  # in train mode: torchattacks restores it after attacking
    from tqdm.auto import tqdm

    epochs_run = 0
    for epoch in range(start_epoch, config.epochs):
        if bad_epochs >= config.patience:
            break
        started = time.perf_counter()
        _set_frozen(model, epoch < config.freeze_epochs, config.train_stages, config.arch)
        train.epoch_seed = config.seed * 10_007 + epoch
        order = torch.Generator().manual_seed(config.seed * 10_007 + epoch)
        loader = DataLoader(train, batch_size=config.batch_size, shuffle=True, generator=order,
                            num_workers=config.workers, drop_last=len(train) > config.batch_size)
        model.train()
        losses = []
        warmup = min(config.warmup_steps, len(loader)) if isinstance(model, FineTuned) else 0  # at most one epoch
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for step, (images, labels) in enumerate(bar):
            # Linear warm-up of every learning rate over the first steps after the backbone is
            # unfrozen: Adam's first updates are full-size whatever the gradient, and a pretrained
            # network loses its features to them. Depends only on (epoch, step): resume-exact.
            done = (epoch - config.freeze_epochs) * len(loader) + step if epoch >= config.freeze_epochs else -1
            warm = 1.0 if done < 0 or done >= warmup else (done + 1) / (warmup + 1)
            scheduled = [group["lr"] for group in optimizer.param_groups]
            if attacker is not None:
                adversarial = attack_batch(attacker, images, labels, config.adv_eps, config.adversarial,
                                           config.adv_steps, seed=config.seed * 10_007 + epoch * 100_003 + step)
                images, labels = torch.cat([images, adversarial]), torch.cat([labels, labels])
            x = prep.normalize(images.to(device)).contiguous(memory_format=torch.channels_last)
            y = labels.float().to(device) * (1 - config.label_smoothing) + config.label_smoothing / 2
            with autocast_context(precision, device):
                logits = model(x).float().view(-1)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            for group, lr in zip(optimizer.param_groups, scheduled):
                group["lr"] = lr * warm
            optimizer.step()
            for group, lr in zip(optimizer.param_groups, scheduled):
                group["lr"] = lr
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        scheduler.step()
        valid_metrics = {}
        if not splits["valid"].empty:
            scores, _ = score_images(model, prep, list(splits["valid"].path), config.batch_size, device, precision)
            ok = ~np.isnan(scores)
            valid_metrics = binary_metrics(splits["valid"].label.to_numpy()[ok], scores[ok], 0.0)
        train_seconds += time.perf_counter() - started
        auc = valid_metrics.get("roc_auc") or 0.0
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "valid_auc": auc,
               "valid_accuracy": valid_metrics.get("accuracy"), "lr": scheduler.get_last_lr()[-1],
               "seconds": time.perf_counter() - started}
        history.append(row)
        log.debug("epoch %d: loss %.4f valid AUC %.4f", epoch + 1, row["train_loss"], auc)
        if echo is not None:
            echo(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, valid AUC {auc:.4f}, "
                  f"acc {row['valid_accuracy'] or 0:.4f} ({row['seconds']:.1f} s)")
        if auc > best_auc:
            best_auc, bad_epochs = auc, 0
            meta = {
                "kind": "cnn", "arch": config.arch, "backbone": config.arch, "featlab": __version__,
                "created": utc_now(), "config": {**asdict(config)}, "preprocessing": prep.as_dict(),
                "weights_info": weights_info, "data_root": str(Path(data_root).resolve()),
                "class_mapping": LABELS, "best_epoch": epoch + 1, "best_valid_auc": auc,
                "n_train": int(len(splits["train"])), "n_valid": int(len(splits["valid"])),
                "parameters": int(sum(p.numel() for p in model.parameters())), "seed": config.seed,
                "precision": precision, "versions": library_versions(),
            }
            state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            save_model_folder(out, ARTIFACT, lambda h, sealed, sd=state_dict: torch.save(
                {"state_dict": sd, "featlab_meta": sealed}, h), meta)
        else:
            bad_epochs += 1
        training_state = {
            "config": asdict(config),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "history": history, "best_auc": best_auc, "bad_epochs": bad_epochs,
            "train_seconds": train_seconds, "torch_rng": torch.get_rng_state(),
        }
        atomic_write(state_file, lambda h, st=training_state: torch.save(st, h))
        _write_history(out, history, train_seconds)
        epochs_run += 1
        if stop_after is not None and epochs_run >= stop_after and epoch + 1 < config.epochs:
            return out  # deliberately stopped early (tests of resume): not finished
    if (out / "meta.json").exists():  # training ended (all epochs or early stopping): the folder is complete
        update_model_meta(out, finished=True)
    return out


def validate_config(config: TrainConfig) -> None:
    """Refuse impossible settings before any work starts (errors name the setting): the checks of
    :class:`~featlab.detectors.configs.TrainConfig`, run again since a config may have been changed after it was made."""
    TrainConfig.__post_init__(config)


def _load_training_state(state_file: Path, config: TrainConfig, device) -> dict:
    """The checkpoint of an interrupted run (tensors and plain data only), refused if made with other settings."""
    try:
        state = load_tensor_file(state_file, "a training checkpoint", map_location=device)
    except Exception as error:  # noqa: BLE001 - a torn or foreign file: one clear line
        raise FeatlabError(f"cannot resume from {state_file}: {str(error).splitlines()[0][:200]}") from None
    saved = state.get("config") if isinstance(state, dict) else None
    if saved is None:
        raise FeatlabError(f"cannot resume from {state_file}: it records no training settings")
    ours = asdict(config)
    different = [k for k in ours if k not in ("epochs", "patience", "workers", "device") and ours[k] != saved.get(k)]
    if different:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {ours[k]!r}" for k in different)
        raise FeatlabError(f"cannot resume {state_file.parent.parent}: the run was started with other settings ({details})")
    return state


def _write_history(out: Path, history: list[dict], train_seconds: float) -> None:
    table = pd.DataFrame(history)
    atomic_write_text(out / "history.csv", table.to_csv(index=False))
    if (out / "meta.json").exists():  # training time so far, without touching the hashed artifact
        update_model_meta(out, train_seconds=train_seconds, epochs_done=int(table.epoch.max()))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(table.epoch, table.train_loss, marker="o", label="train loss")
    ax.plot(table.epoch, table.valid_auc, marker="s", label="valid ROC-AUC")
    ax.set(xlabel="epoch", title="training curves")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)


# ------------------------------------------------------------ load / evaluate


def load_cnn(folder: str | os.PathLike, device: str = "auto",
             meta: dict | None = None) -> tuple[nn.Module, Preprocessing, dict, torch.device]:
    """Rebuild the architecture and load the verified best weights (weights_only, hash-checked; the file is read
    once). ``meta``: ``meta.json`` when the caller has read it already."""
    artifact, meta, data = verified_artifact(folder, meta)
    if meta.get("kind") != "cnn":
        raise FeatlabError(f"{folder} is not a CNN model folder")
    arch = meta["arch"]
    structure_weights = "default" if arch == "resnet50-opennsfw" else "none"
    model, _, _ = build_model(arch, structure_weights, None, head_layers=meta["config"].get("head_layers", "pool"))
    payload = load_tensor_file(artifact, "a CNN checkpoint", data=data)
    if isinstance(payload, dict) and "state_dict" in payload:
        check_sealed(folder, meta, payload.get("featlab_meta"))
        payload = payload["state_dict"]
    else:
        log.warning("%s: a featlab 0.1 checkpoint without sealed metadata; meta.json cannot be verified", folder)
    try:
        model.load_state_dict(payload, strict=True)
    except (RuntimeError, TypeError) as error:
        raise FeatlabError(f"{artifact} does not fit arch {arch}: {str(error).splitlines()[0][:160]}") from None
    prep = Preprocessing.from_dict(meta["preprocessing"])
    torch_device = resolve_device(device)
    return model.to(torch_device, memory_format=torch.channels_last).eval(), prep, meta, torch_device
