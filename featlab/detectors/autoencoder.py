"""A small convolutional autoencoder: latent codes for clustering, reconstruction error for one-class detection.

``featlab train-ae`` trains :class:`ConvAutoencoder` on the whole face squeezed to ``image_size``
(64 px default: CPU-trainable in seconds per epoch) and saves a model folder like the CNNs'
(sealed ``model.pt``, ``meta.json`` with its hash, ``history.csv``, a loss curve, ``train/last.pt``
for exact resume). Labels are never used to fit it: with ``real_only`` it sees the train split's
real faces only and becomes a one-class detector whose score is the reconstruction error minus
a threshold (the 95th percentile of the train reals' errors), so ``>= 0`` means "fake"
(:class:`AnomalyScore`; ``featlab evaluate/robustness/compare`` treat it like any model). The
best epoch is chosen by the valid split's reconstruction loss (reals only when ``real_only``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from featlab import LABELS, __version__
from featlab.core.errors import FeatlabError
from featlab.core.fileio import atomic_write, atomic_write_text, load_tensor_file
from featlab.core.versions import library_versions, utc_now
from featlab.data.dataset import scan_dataset
from featlab.detectors.configs import AETrainConfig  # noqa: F401 - re-exported
from featlab.detectors.modelfile import check_sealed, save_model_folder, update_model_meta, verified_artifact
from featlab.features.runtime import ImageTensors, collate_images, resolve_device
from featlab.features.specs import Preprocessing

log = logging.getLogger(__name__)

ARTIFACT = "model.pt"
THRESHOLD_QUANTILE = 0.95


def ae_preprocessing(image_size: int) -> Preprocessing:
    """The whole image squeezed to a square, pixels scaled to [-1, 1]."""
    return Preprocessing(resize=image_size, crop=image_size, mean=(127.5,) * 3, std=(127.5,) * 3, resize_mode="square")


class ConvAutoencoder(nn.Module):
    """Strided-conv encoder (each block halves the side) -> linear latent -> mirrored decoder, tanh output."""

    def __init__(self, image_size: int = 64, latent_dim: int = 128, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        if image_size % (2 ** len(widths)):
            raise FeatlabError(f"image size must be a multiple of {2 ** len(widths)}")
        side = image_size // 2 ** len(widths)
        enc, channels = [], 3
        for width in widths:
            enc += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2)]
            channels = width
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(channels * side * side, latent_dim))
        dec = []
        for width in (*reversed(widths[:-1]), 32):
            dec += [nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        dec[-3] = nn.ConvTranspose2d(dec[-3].in_channels, 3, 4, stride=2, padding=1)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, widths[-1] * side * side),
                                     nn.Unflatten(1, (widths[-1], side, side)), *dec[:-2], nn.Tanh())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def reconstruction_error(model: ConvAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, (N,)."""
    return (model(x) - x).square().mean(dim=(1, 2, 3))


class AnomalyScore(nn.Module):
    """Normalised pixels -> (N, 1) "fake" score: reconstruction error minus the one-class threshold."""

    def __init__(self, model: ConvAutoencoder, threshold: float) -> None:
        super().__init__()
        self.model = model
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (reconstruction_error(self.model, x) - self.threshold).view(-1, 1)


def _decode_all(paths: list[str], prep: Preprocessing) -> tuple[torch.Tensor, list[int]]:
    """Every image as uint8 in memory (64 px: 12 KB each), and the indices that decoded."""
    batches, kept = [], []
    loader = DataLoader(ImageTensors(paths, prep), batch_size=256, collate_fn=collate_images)
    for indices, batch, why in loader:
        good = [k for k, reason in enumerate(why) if not reason]
        batches.append(batch[good])
        kept += [int(indices[k]) for k in good]
    return (torch.cat(batches) if batches else torch.zeros((0, 3, prep.crop, prep.crop), dtype=torch.uint8)), kept


def _errors(model: ConvAutoencoder, images: torch.Tensor, prep: Preprocessing, device, batch_size: int = 256):
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            out.append(reconstruction_error(model, prep.normalize(images[start:start + batch_size].to(device))).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def train_ae(config: AETrainConfig, data_root: str | os.PathLike, out: str | os.PathLike, resume: bool = False,
             progress: bool = True, stop_after: int | None = None,
             echo: Callable[[str], None] | None = print) -> Path:
    """Train (or resume) the autoencoder; returns the model folder. ``stop_after`` ends early (resume tests);
    ``echo`` receives one summary line per epoch (None: silent)."""
    AETrainConfig.__post_init__(config)  # again: a config may have been changed after it was made
    out = Path(out)
    state_file = out / "train" / "last.pt"
    if (out / "meta.json").exists() and state_file.exists() and not resume:
        raise FeatlabError(f"{out} already holds a training run; resume it (--resume) or choose another folder")
    device = resolve_device(config.device)
    prep = ae_preprocessing(config.image_size)
    manifest = scan_dataset(data_root, check_images=False)
    rows = {s: manifest[(manifest.split == s) & (manifest.status == "ok")] for s in ("train", "valid")}
    if config.real_only:
        rows = {s: r[r.label == LABELS["real"]] for s, r in rows.items()}
    if rows["train"].empty:
        raise FeatlabError(f"{data_root}: no training images" + (" of the real class" if config.real_only else ""))
    train_images, _ = _decode_all(list(rows["train"].path), prep)
    valid_images, _ = _decode_all(list(rows["valid"].path), prep)
    torch.manual_seed(config.seed)
    model = ConvAutoencoder(config.image_size, config.latent_dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history, best_loss, start_epoch, train_seconds = [], float("inf"), 0, 0.0
    if resume:
        if not state_file.exists():
            raise FeatlabError(f"nothing to resume: {state_file} does not exist")
        state = load_tensor_file(state_file, "a training checkpoint", map_location=device)
        if state["config"] != asdict(config):
            changed = [k for k, v in asdict(config).items() if state["config"].get(k) != v]
            raise FeatlabError(f"cannot resume with other settings (changed: {', '.join(changed)})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, best_loss = state["history"], state["best_loss"]
        start_epoch, train_seconds = state["epoch"] + 1, state["train_seconds"]
    done_this_call = 0
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        model.train()
        # the order depends only on (seed, epoch): a resumed run sees exactly the batches of an uninterrupted one
        order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(config.seed * 10_007 + epoch))
        losses = []
        for start in range(0, len(order), config.batch_size):
            x = prep.normalize(train_images[order[start:start + config.batch_size]].to(device))
            loss = reconstruction_error(model, x).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        valid_loss = float(_errors(model, valid_images, prep, device).mean()) if len(valid_images) else float(np.mean(losses))
        train_seconds += time.perf_counter() - started
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "valid_loss": valid_loss,
                        "seconds": time.perf_counter() - started})
        if echo is not None:
            echo(f"epoch {epoch + 1}: train loss {history[-1]['train_loss']:.5f}, valid loss {valid_loss:.5f} "
                  f"({history[-1]['seconds']:.1f} s)")
        if valid_loss < best_loss:
            best_loss = valid_loss
            threshold = float(np.quantile(_errors(model, train_images, prep, device), THRESHOLD_QUANTILE))
            meta = {
                "kind": "ae", "arch": "conv-ae", "backbone": "conv-ae", "featlab": __version__, "created": utc_now(),
                "config": asdict(config), "preprocessing": prep.as_dict(), "data_root": str(Path(data_root).resolve()),
                "class_mapping": LABELS, "best_epoch": epoch + 1, "best_valid_loss": valid_loss,
                "best_valid_auc": None, "threshold": threshold, "threshold_rule":
                f"{THRESHOLD_QUANTILE:.0%} quantile of the train {'reals' if config.real_only else 'images'}' errors",
                "n_train": len(train_images), "n_valid": len(valid_images),
                "parameters": int(sum(p.numel() for p in model.parameters())), "seed": config.seed,
                "weights_info": {"source": "none (trained from scratch)", "pretrained": False, "fingerprint": "conv-ae"},
                "versions": library_versions(),
            }
            state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            save_model_folder(out, ARTIFACT, lambda h, sealed, sd=state_dict: torch.save(
                {"state_dict": sd, "featlab_meta": sealed}, h), meta)
        state = {"config": asdict(config), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "epoch": epoch, "history": history, "best_loss": best_loss, "train_seconds": train_seconds}
        atomic_write(state_file, lambda h, st=state: torch.save(st, h))
        _write_history(out, history, train_seconds)
        done_this_call += 1
        if stop_after is not None and done_this_call >= stop_after and epoch + 1 < config.epochs:
            return out
    update_model_meta(out, finished=True, train_seconds=train_seconds)
    return out


def _write_history(out: Path, history: list[dict], train_seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    atomic_write_text(out / "history.csv", pd.DataFrame(history).to_csv(index=False))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["valid_loss"] for h in history], label="valid")
    ax.set(xlabel="epoch", ylabel="reconstruction MSE", title=f"autoencoder ({train_seconds:.0f} s)")
    ax.legend()
    fig.tight_layout()
    atomic_write(out / "curves.png", lambda h: fig.savefig(h, format="png", dpi=90))
    plt.close(fig)


def load_ae(folder: str | os.PathLike, device: str = "auto",
            meta: dict | None = None) -> tuple[ConvAutoencoder, Preprocessing, dict, torch.device]:
    """The verified autoencoder of a model folder (weights_only, hash- and seal-checked; read once)."""
    artifact, meta, data = verified_artifact(folder, meta)
    if meta.get("kind") != "ae":
        raise FeatlabError(f"{folder} is not an autoencoder model folder")
    payload = load_tensor_file(artifact, "an autoencoder checkpoint", data=data)
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise FeatlabError(f"{artifact} is not a featlab autoencoder checkpoint")
    check_sealed(folder, meta, payload.get("featlab_meta"))
    model = ConvAutoencoder(meta["config"]["image_size"], meta["config"]["latent_dim"])
    model.load_state_dict(payload["state_dict"], strict=True)
    torch_device = resolve_device(device)
    prep = Preprocessing.from_dict(meta["preprocessing"])
    return model.to(torch_device).eval(), prep, meta, torch_device


def load_anomaly_scorer(folder, device: str = "auto",
                        meta: dict | None = None) -> tuple[AnomalyScore, Preprocessing, dict, torch.device]:
    """As :func:`featlab.detectors.cnn.load_cnn`, for an autoencoder: the network outputs the one-class "fake" score."""
    model, prep, meta, torch_device = load_ae(folder, device, meta)
    return AnomalyScore(model, float(meta["threshold"])).eval(), prep, meta, torch_device


def latents(folder: str | os.PathLike, paths: list[str], device: str = "auto") -> tuple[np.ndarray, list[int]]:
    """Latent codes of image files, and the indices of the files that decoded."""
    model, prep, _, torch_device = load_ae(folder, device)
    images, kept = _decode_all(paths, prep)
    codes = []
    with torch.inference_mode():
        for start in range(0, len(images), 256):
            codes.append(model.encode(prep.normalize(images[start:start + 256].to(torch_device))).cpu())
    return (torch.cat(codes).numpy() if codes else np.zeros((0, model.encoder[-1].out_features))), kept
