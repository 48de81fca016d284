"""The ``featlab`` command line: a thin typer layer over the library API.

Errors the user can fix print one line (``featlab: error: ...``) and exit 1; usage errors
exit 2 (typer/click); tracebacks are only shown with ``--log-level debug``.
"""

from __future__ import annotations

import errno
import functools
import logging
import sys
from pathlib import Path

import click
import typer
from typer.core import TyperGroup

from featlab import __version__
from featlab.core.checks import check_device, check_precision, check_ray, existing_dir, existing_path
from featlab.core.errors import FeatlabError
from featlab.core.workspace import WORKDIR_ENV, Workspace

log = logging.getLogger("featlab")


def _bare_ray_means_local(args: list[str]) -> list[str]:
    """``--ray`` with no value means a local cluster: the next word is its value only when it is one
    (local, auto or HOST:PORT), so ``--ray --workdir W`` and a trailing ``--ray`` both work."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--ray":
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None or not (following in ("local", "auto") or ":" in following):
                out.append("local")
    return out


class _Group(TyperGroup):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _bare_ray_means_local(list(args)))


app = typer.Typer(
    cls=_Group,
    name="featlab",
    help="Tell real face photos from DeepFake / GAN-made / edited ones: frozen CNN features + SVM, "
    "compared with fine-tuned CNN baselines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Dataset tools: assemble, check and generate datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

RayOption = typer.Option(None, "--ray", help="Run on Ray Data: 'local' (a local cluster; also a bare --ray), 'auto' "
                         "(the running cluster) or a cluster address HOST:PORT; needs pip install 'featlab\\[ray]'.")
WorkdirOption = typer.Option(
    None,
    "--workdir",
    envvar=WORKDIR_ENV,
    help="Work folder for features/, models/ and reports/ (default ./featlab-work or $FEATLAB_WORKDIR).",
)


def _friendly(command):
    """Turn FeatlabError into one line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FeatlabError as error:
            if log.isEnabledFor(logging.DEBUG):
                log.exception("failed")
            typer.echo(f"featlab: error: {error}", err=True)
            raise typer.Exit(1) from None
        except OSError as error:  # disk full, read-only folder, permissions: say which file and why
            if log.isEnabledFor(logging.DEBUG):
                log.exception("failed")
            where = f": {error.filename}" if error.filename else ""
            hint = {errno.ENOSPC: "; free some space and run the same command again: everything already "
                                  "committed is kept", errno.EROFS: "; choose a writable --workdir / --out",
                    errno.EACCES: "; check the permissions"}.get(error.errno, "")
            typer.echo(f"featlab: error: {error.strerror or error}{where}{hint}", err=True)
            raise typer.Exit(1) from None
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise  # usage errors (exit 2) and deliberate exits
        except KeyboardInterrupt:
            typer.echo(
                "\nfeatlab: interrupted. Everything already committed is kept: extracted embeddings (saved shard by "
                "shard), finished models, and the last completed training epoch; run the same command again to "
                "resume (train-cnn: add --resume).", err=True,
            )
            raise typer.Exit(130) from None
        except Exception as error:  # noqa: BLE001 - a bug must still end in one line, not a traceback
            log.debug("internal error", exc_info=True)
            first = (str(error).strip().splitlines() or [""])[0][:200]
            typer.echo(f"featlab: error: internal error ({type(error).__name__}: {first}); rerun with "
                       "--log-level debug for the traceback and report it", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"featlab {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


# --------------------------------------------------------------------------- data


@data_app.command("check")
@_friendly
def data_check(
    root: Path = typer.Argument(..., help="Dataset root: {train,valid,test}/{real,fake}/ or {real,fake}/."),
    out: Path | None = typer.Option(None, "--out", help="Write the manifest CSV here."),
) -> None:
    """Decode every image, print counts per split x class and list quarantined files."""
    existing_dir(root)
    from featlab.data.dataset import scan_dataset, summarize

    manifest = scan_dataset(root, check_images=True)
    typer.echo(summarize(manifest).to_string())
    for row in manifest[manifest.status != "ok"].itertuples():
        typer.echo(f"quarantined: {row.path}: {row.reason}")
    if out:
        manifest.to_csv(out, index=False)
        typer.echo(f"manifest: {out}")


@data_app.command("build")
@_friendly
def data_build(
    faces140k: Path = typer.Option(..., "--faces140k", help="'140K Real and Fake Faces' download folder."),
    ciplab: Path = typer.Option(..., "--ciplab", help="'Real and Fake Face Detection' download folder."),
    out: Path = typer.Option(..., "--out", help="Output folder (the write-up's combined-real-and-fake-faces)."),
    seed: int = typer.Option(0, "--seed", help="Seed for spreading the second dataset over the splits."),
    ratios: str = typer.Option("0.7,0.15,0.15", "--ratios", help="train,valid,test fractions for that dataset."),
    link: bool = typer.Option(False, "--link", help="Hard-link instead of copying (same filesystem)."),
    force: bool = typer.Option(False, "--force", help="Replace a different existing build."),
) -> None:
    """Merge both Kaggle datasets into OUT/combined-real-vs-fake/{train,valid,test}/{real,fake}."""
    from data_prep.build import build

    try:
        parsed = tuple(float(r) for r in ratios.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected three numbers like 0.7,0.15,0.15, got {ratios!r}") from None
    result = build(faces140k, ciplab, out, seed=seed, ratios=parsed, link=link, force=force)
    summary = result.summary
    state = "written" if result.written else "already up to date (nothing copied)"
    typer.echo(f"{result.out}: {state}")
    for split, counts in summary["counts"].items():
        typer.echo(f"  {split:<6} real={counts['real']:<7} fake={counts['fake']}")
    typer.echo(
        f"  duplicates removed: {len(summary['duplicates_removed'])}, quarantined: {len(summary['quarantined'])}"
    )


@data_app.command("synth")
@_friendly
def data_synth(
    out: Path = typer.Argument(..., help="Folder to create."),
    train: int = typer.Option(40, help="Images per class in train."),
    valid: int = typer.Option(12, help="Images per class in valid."),
    test: int = typer.Option(12, help="Images per class in test."),
    size: int = typer.Option(64, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Generator seed."),
) -> None:
    """Generate a SYNTHETIC (not real faces) dataset in the featlab layout, for first runs and tests."""
    from data_prep.synth import SYNTHETIC_TAG, make_synthetic_dataset

    make_synthetic_dataset(out, {"train": train, "valid": valid, "test": test}, size=size, seed=seed)
    typer.echo(f"{out}: {SYNTHETIC_TAG}")


# ---------------------------------------------------------------- pipeline stages


@app.command()
@_friendly
def extract(
    data: Path = typer.Option(..., "--data", help="Dataset root ({train,valid,test}/{real,fake}/)."),
    backbone: str = typer.Option(
        "auto", "--backbone", help="Registry name (see 'featlab backbones'); auto = resnet50 when its torchvision "
        "weights are on disk, else resnet50-opennsfw (offline)."
    ),
    weights: str = typer.Option("default", "--weights", help="default, a state_dict file, or none (random: tests only)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda > cpu), cpu, cuda, cuda:N."),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16, fp16 (CUDA)."),
    engine: str = typer.Option("auto", "--engine", help="torch or onnxruntime (resnet50-opennsfw on CPU)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    shard_size: int = typer.Option(512, "--shard-size", min=1, help="Images per committed shard (the most a "
                                   "killed run can lose)."),
    ray: str | None = RayOption,
    workers: int | None = typer.Option(None, "--workers", min=0, help="Decoding processes (default: 0 on CPUs with <= 4 cores, up to 8 with CUDA)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    layers: str = typer.Option(
        "auto", "--layers", help="Comma-separated stages to pool (see 'featlab backbones'), 'pool' for the "
        "backbone's classic pooled embedding, or auto (the two middle stages: featlab's default)."),
    pooling: str | None = typer.Option(None, "--pooling", help="avg, avg+std (default) or gem."),
    view: str | None = typer.Option(None, "--view", help="native (default: centre crop of the image's own "
                                    "pixels, no resampling), crop (the weights' resize + crop) or full."),
    flip: bool | None = typer.Option(None, "--flip/--no-flip", help="Average with the mirrored image (2x cost)."),
    workdir: Path | None = WorkdirOption,
) -> None:
    """Run a pretrained backbone over every image of every split and cache the embeddings.

    Re-running computes only images whose content is not cached yet; a killed run resumes.
    """
    existing_dir(data)
    check_device(device), check_precision(precision), check_ray(ray)
    ws = _workspace(workdir)
    from featlab.data.hashmemo import HASH_MEMO
    from featlab.features.backbones import get_spec, resolve_auto
    from featlab.features.extract import extract_dataset
    from featlab.features.recipe import parse_recipe

    name, reason = resolve_auto(backbone)
    if reason:
        typer.echo(f"backbone: {name} ({reason})")
    recipe = parse_recipe(get_spec(name), layers, pooling, view, flip)
    typer.echo(f"features: {recipe.describe()}")
    result = extract_dataset(
        data, ws.features, backbone=name, weights=weights, device=device, precision=precision, engine=engine,
        batch_size=batch_size, num_workers=workers, progress=progress, recipe=recipe, shard_size=shard_size,
        hash_memo=ws.features / HASH_MEMO, ray=ray,
    )
    meta = result.cache.meta
    usable = int((result.manifest.status == "ok").sum())
    typer.echo(f"backbone {name}, weights {meta['weights_info']['source']}, {result.device}, {result.precision}")
    if not meta["weights_info"]["pretrained"]:
        typer.echo("WARNING: random weights (--weights none): these features prove plumbing only")
    typer.echo(
        f"images {len(result.manifest)}: computed {result.computed} in {result.seconds:.1f} s "
        f"({result.images_per_second:.1f} img/s), already cached {usable - result.computed}, "
        f"skipped {len(result.quarantined)}"
    )
    for row in result.quarantined.itertuples():
        typer.echo(f"skipped: {row.path}: {row.reason}")
    typer.echo(f"features: {result.cache.folder}")


@app.command("backbones")
def list_backbones() -> None:
    """List the registered backbones with their embedding size and preprocessing."""
    from featlab.features.backbones import BACKBONES, torchvision_cache_file

    for spec in BACKBONES.values():
        p = spec.preprocessing
        cached = torchvision_cache_file(spec)
        where = "shipped (offline)" if cached is None else ("on disk" if cached.is_file() else "download needed")
        typer.echo(
            f"{spec.name:<18} dim={spec.embed_dim:<5} resize={p.resize}({p.resize_mode}) crop={p.crop} "
            f"{'BGR' if p.bgr else 'RGB'}  weights: {where}"
        )
        stages = ", ".join(f"{name}({channels})" for name, (_, channels) in spec.stages.items())
        typer.echo(f"{'':<18} stages: {stages}")


@app.command("fit-svm")
@_friendly
def fit_svm_command(
    pca: str = typer.Option("256", "--pca", help="PCA components (int), variance fraction (e.g. 0.95) or 0 for none."),
    kernel: str = typer.Option("rbf", "--kernel", help="rbf or linear (solver svc)."),
    c: str = typer.Option("0.1,1,10", "--C", help="C value, or comma-separated grid searched on the valid split."),
    gamma: str = typer.Option("scale", "--gamma", help="RBF gamma: 'scale', a number, or a comma-separated grid."),
    class_weight: str | None = typer.Option(None, "--class-weight", help="'balanced' for unbalanced classes."),
    probability: bool = typer.Option(False, "--probability", help="Platt-calibrate scores into p(fake)."),
    solver: str = typer.Option(
        "svc", "--solver", help="svc: exact kernel SVM, best up to ~20-50k train images (fit time grows ~n^2). "
        "linear: LinearSVC, linear time, for large sets. nystroem: RBF kernel approximation + LinearSVC, "
        "near-RBF accuracy at linear cost, for large sets."
    ),
    seed: int = typer.Option(0, "--seed"),
    augment: str = typer.Option("", "--augment", help="Add one augmented copy of every training image: jpeg, blur "
                                "or jpeg,blur (CNNDetection-style random draws, seeded; extracted once, cached)."),
    jobs: int = typer.Option(-1, "--jobs", help="Parallel grid-search workers (joblib)."),
    max_memory: str = typer.Option("", "--max-memory", help="Memory ceiling for the fit process, e.g. 2GB: when "
                                   "the embeddings would need more, fit out of core (chunks from the cache: "
                                   "StandardScaler -> PCA from X^T X -> Nystroem -> SGD hinge), sized from what is "
                                   "left once the process's own footprint (libraries, the index) is counted."),
    stream: bool = typer.Option(False, "--stream", help="Fit out of core even when the embeddings fit in memory "
                                "(under --max-memory, 2GB when not given)."),
    data: Path | None = typer.Option(None, "--data", help="Which extracted dataset to train on when the cache holds "
                                     "several (default: the dataset extracted last)."),
    backbone: str | None = typer.Option(None, "--backbone", help="Which features (when several were extracted)."),
    features: str = typer.Option("", "--features", help="Concatenate feature caches (folder names under "
                                 "features/, comma-separated, as 'featlab extract' prints them): other backbones, "
                                 "layers or recipes side by side, on the dataset the first one indexes."),
    name: str | None = typer.Option(None, "--name", help="Model folder name under models/."),
    force: bool = typer.Option(False, "--force", help="Replace an existing model folder --name (and its reports)."),
    workdir: Path | None = WorkdirOption,
) -> None:
    """Fit StandardScaler -> PCA -> SVM on the cached train split, tune on valid, report on test."""
    from featlab.core.checks import parse_grid, parse_pca

    c_grid, gamma_grid = parse_grid(c, "C"), parse_grid(gamma, "gamma", allow_words=("scale", "auto"))
    pca_size = parse_pca(pca)
    if class_weight not in (None, "balanced"):
        raise typer.BadParameter("only 'balanced' is supported", param_hint="--class-weight")
    from featlab.detectors.streaming import parse_memory
    from featlab.detectors.svm import fit_from_cache
    from featlab.evaluation.evaluate import evaluate_model
    from featlab.features.cache import select_cache
    from featlab.reports.report import print_metrics

    ws = _workspace(workdir)
    if features:
        from featlab.detectors.svm import concat_caches
        from featlab.features.cache import EmbeddingCache

        folders = [ws.features / part.strip() for part in features.split(",") if part.strip()]
        missing = [f.name for f in folders if not (f / "meta.json").is_file()]
        if missing:
            raise FeatlabError(f"no feature cache named {', '.join(missing)} in {ws.features}")
        cache = concat_caches([EmbeddingCache(f) for f in folders], ws.features, data_root=data)
    else:
        cache = select_cache(ws.features, backbone)
    folder, result = fit_from_cache(
        cache, ws.models, name=name, seed=seed, n_jobs=jobs, pca=pca_size, kernel=kernel, C=c_grid, gamma=gamma_grid,
        class_weight=class_weight, probability=probability, solver=solver, augment=augment,
        max_memory=parse_memory(max_memory), stream=stream, data_root=data, force=force,
    )
    typer.echo(f"features: {cache.folder.name} ({cache.meta['weights_info'].get('source')})")
    for note in result.notes:
        typer.echo(f"note: {note}")
    from featlab.reports.page import params_in_words

    typer.echo(f"chosen {params_in_words(result.best_params)} by {result.selection}"
               + (f" (balanced accuracy {result.selection_score:.4f})" if result.selection_score == result.selection_score
                  else "") + f"; fit {result.fit_seconds:.1f} s, search {result.search_seconds:.1f} s")
    typer.echo(f"model: {folder}")
    splits = set(cache.index().split)
    for split in ("valid", "test"):
        if split in splits:
            report, path = evaluate_model(folder, ws, split=split)
            if split == "test":
                typer.echo(print_metrics(report))
            typer.echo(f"report ({split}): {path}")


@app.command("train-cnn")
@_friendly
def train_cnn_command(
    arch: str = typer.Option("auto", "--arch", help="auto (resnet50 when its torchvision weights are on disk, "
                             "else resnet50-opennsfw, as extract --backbone auto), resnet18, resnet50, densenet121, "
                             "resnet50-opennsfw (offline pretrained) or custom (small CNN from scratch)."),
    data: Path = typer.Option(..., "--data", help="Dataset root ({train,valid,test}/{real,fake}/)."),
    out: Path | None = typer.Option(None, "--out", help="Model folder (default models/cnn-ARCH-TIME)."),
    weights: str = typer.Option("default", "--weights", help="Pretrained weights: default, a file, or none."),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(1e-4, "--weight-decay"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw or sgd."),
    schedule: str = typer.Option("cosine", "--schedule", help="cosine or step."),
    freeze_epochs: int = typer.Option(2, "--freeze-epochs", min=0,
                                      help="Train only the new head for the first N epochs."),
    head_layers: str = typer.Option(
        "auto", "--head-layers", help="What the new head sees: pool (the backbone's pooled output), auto (the "
        "SVM family's default stages, mean+std pooled) or stage names."),
    view: str | None = typer.Option(None, "--view", help="native (default for pretrained archs: no resampling), "
                                    "crop or full."),
    backbone_lr_scale: float = typer.Option(
        1e-3, "--backbone-lr-scale", min=0.0, help="Pretrained layers: each weight tensor's learning rate is this "
        "times its RMS size (open_nsfw's folded batch norm makes layer scales differ 1000-fold)."),
    warmup_steps: int = typer.Option(50, "--warmup-steps", min=0, help="Linear warm-up after unfreezing."),
    clip_grad: float = typer.Option(1.0, "--clip-grad", min=0.0, help="Max gradient norm (0 = off)."),
    image_size: int | None = typer.Option(None, "--image-size", help="Override resize/crop (e.g. 64 for quick runs)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, or bf16/fp16 autocast (mixed precision)."),
    patience: int = typer.Option(3, "--patience", help="Early stopping: epochs without a better valid ROC-AUC."),
    flip: bool = typer.Option(True, "--flip/--no-flip"),
    crop_scale: float = typer.Option(0.85, "--crop-scale", help="Random crop keeps >= this fraction (1 = off)."),
    color_jitter: float = typer.Option(0.1, "--color-jitter"),
    jpeg_prob: float = typer.Option(0.0, "--jpeg-prob", help="JPEG re-compression augmentation probability."),
    adversarial: str = typer.Option("", "--adversarial", help="Adversarial training: pgd or fgsm (Madry-style: each "
                                    "batch doubled with its L-inf adversarial copies, made in pixel space)."),
    adv_eps: str = typer.Option("4/255", "--adv-eps", help="Adversarial budget, e.g. 4/255."),
    adv_steps: int = typer.Option(3, "--adv-steps", min=1, help="PGD steps per batch."),
    blur_prob: float = typer.Option(0.0, "--blur-prob", help="Gaussian blur augmentation probability."),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(0, "--workers", min=0),
    device: str = typer.Option("auto", "--device"),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run in --out from its last epoch."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    workdir: Path | None = WorkdirOption,
) -> None:
    """Fine-tune a CNN baseline on the same splits, then report on the test split."""
    existing_dir(data)
    check_device(device), check_precision(precision)
    import time as _time

    from featlab.data.dataset import scan_dataset
    from featlab.detectors.cnn import Augment, TrainConfig, train_cnn
    from featlab.evaluation.evaluate import evaluate_model
    from featlab.reports.report import print_metrics

    ws = _workspace(workdir)
    from featlab.detectors.adversarial import parse_eps
    from featlab.features.backbones import resolve_auto

    arch, reason = resolve_auto(arch)
    if reason:
        typer.echo(f"arch: {arch} ({reason})")

    config = TrainConfig(
        arch=arch, weights=weights, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        optimizer=optimizer, schedule=schedule, freeze_epochs=freeze_epochs, image_size=image_size,
        precision=precision, patience=patience, seed=seed, workers=workers, device=device, view=view,
        head_layers=head_layers, backbone_lr_scale=backbone_lr_scale, warmup_steps=warmup_steps,
        clip_grad=clip_grad or None, adversarial=adversarial, adv_eps=parse_eps(adv_eps)[0], adv_steps=adv_steps,
        augment=Augment(flip=flip, crop_scale=crop_scale, color_jitter=color_jitter, jpeg_prob=jpeg_prob,
                        blur_prob=blur_prob),
    )
    folder = out or ws.models / f"cnn-{arch}-{_time.strftime('%Y%m%d-%H%M%S')}"
    train_cnn(config, data, folder, resume=resume, progress=progress, echo=typer.echo)
    typer.echo(f"model: {folder}")
    if "test" in set(scan_dataset(data, check_images=False).split):
        report, path = evaluate_model(folder, ws, split="test", data_root=str(data), device=device)
        typer.echo(print_metrics(report))
        typer.echo(f"report (test): {path}")


@app.command("fit-oneclass")
@_friendly
def fit_oneclass_command(
    method: str = typer.Option("ocsvm", "--method", help="ocsvm (OneClassSVM), iforest (IsolationForest) or "
                               "mahalanobis (robust covariance, EllipticEnvelope)."),
    pca: str = typer.Option("64", "--pca", help="PCA components before the detector (0: none)."),
    seed: int = typer.Option(0, "--seed"),
    backbone: str | None = typer.Option(None, "--backbone", help="Which features (when several were extracted)."),
    features: str = typer.Option("", "--features", help="A feature cache by folder name under features/."),
    data: Path | None = typer.Option(None, "--data", help="Which extracted dataset's train reals to fit on "
                                     "(default: the dataset the cache was last extracted for)."),
    name: str | None = typer.Option(None, "--name", help="Model folder name under models/."),
    force: bool = typer.Option(False, "--force", help="Replace an existing model folder --name (and its reports)."),
    workdir: Path | None = WorkdirOption,
) -> None:
    """A one-class detector on cached embeddings, fitted on the train split's REAL faces only: fakes it has
    never seen score as anomalies. Evaluate, robustness and compare treat it like any model."""
    from featlab.detectors.classical import parse_pca
    from featlab.detectors.oneclass import fit_oneclass_from_cache
    from featlab.evaluation.evaluate import evaluate_model
    from featlab.features.cache import select_cache
    from featlab.reports.report import print_metrics

    ws = _workspace(workdir)
    if features:
        from featlab.features.cache import EmbeddingCache

        if not (ws.features / features / "meta.json").is_file():
            raise FeatlabError(f"no feature cache named {features} in {ws.features}")
        cache = EmbeddingCache(ws.features / features)
    else:
        cache = select_cache(ws.features, backbone)
    folder = fit_oneclass_from_cache(cache, ws.models, method, parse_pca(pca), seed, name, data, force=force)
    typer.echo(f"features: {cache.folder.name}; model: {folder}")
    if "test" in set(cache.index().split):
        report, path = evaluate_model(folder, ws, split="test")
        typer.echo(print_metrics(report))
        typer.echo(f"report (test): {path}")


@app.command("train-ae")
@_friendly
def train_ae_command(
    data: Path = typer.Option(..., "--data", help="Dataset root ({train,valid,test}/{real,fake}/)."),
    out: Path | None = typer.Option(None, "--out", help="Model folder (default <workdir>/models/ae-...)."),
    real_only: bool = typer.Option(False, "--real-only", help="Train on real faces only: a one-class detector "
                                   "(score = reconstruction error above the train reals' 95th percentile)."),
    image_size: int = typer.Option(64, "--image-size", min=16, help="Side in pixels (multiple of 16)."),
    latent_dim: int = typer.Option(128, "--latent-dim", min=2),
    epochs: int = typer.Option(15, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(2e-3, "--lr", min=0.0),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run exactly where it stopped."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    workdir: Path | None = WorkdirOption,
) -> None:
    """Train a small convolutional autoencoder (no labels): latents for `featlab cluster --ae`, and with
    --real-only a one-class detector that `evaluate`, `robustness` and `compare` score like any model."""
    import time

    from featlab.detectors.autoencoder import AETrainConfig, train_ae

    ws = _workspace(workdir)
    config = AETrainConfig(image_size=image_size, latent_dim=latent_dim, epochs=epochs, batch_size=batch_size, lr=lr,
                           real_only=real_only, seed=seed, device=device)
    folder = out or ws.models / f"ae-{'real-' if real_only else ''}{time.strftime('%Y%m%d-%H%M%S')}"
    train_ae(config, data, folder, resume=resume, progress=progress, echo=typer.echo)
    typer.echo(f"model: {folder}")


@app.command()
@_friendly
def cluster(
    data: Path = typer.Option(..., "--data", help="Dataset root; labels are read only to score the clusters."),
    split: str = typer.Option("test", "--split", help="Split to cluster, or 'all'."),
    backbone: str = typer.Option("auto", "--backbone"),
    weights: str = typer.Option("default", "--weights", help="default, none (random: plumbing only) or a file."),
    recipes: str = typer.Option("auto", "--recipes", help="Feature recipes to cluster, ';'-separated "
                                "(layers[:pooling[:view[:flip]]]; 'auto' = the default, 'pool' = the pooled output)."),
    ae: list[Path] | None = typer.Option(None, "--ae", help="Autoencoder model folder whose latents to cluster too."),
    methods: str = typer.Option("kmeans,gmm,hdbscan", "--methods"),
    k: str = typer.Option("auto", "--k", help="Clusters for k-means / GMM, or 'auto' (best silhouette, 2-8)."),
    map_method: str = typer.Option("umap", "--map", help="2-D map: umap, pca or tsne."),
    components: int = typer.Option(50, "--components", min=2, help="PCA components before clustering."),
    seed: int = typer.Option(0, "--seed"),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default <workdir>/reports/cluster)."),
    device: str = typer.Option("auto", "--device"),
    workdir: Path | None = WorkdirOption,
) -> None:
    """Cluster embeddings (cached) and autoencoder latents with k-means, a Gaussian mixture and HDBSCAN; score
    purity / ARI / NMI against real/fake and the source groups; draw UMAP maps (cluster.md/html/json)."""
    from featlab.analysis.clustering import cluster_dataset

    if k != "auto" and not k.isdigit():
        raise typer.BadParameter("k is a whole number or 'auto'", param_hint="--k")
    ws = _workspace(workdir)
    table, written = cluster_dataset(
        data, ws, out or ws.reports / "cluster", split=split, backbone=backbone, weights=weights, recipes=recipes,
        ae_models=[str(a) for a in ae or []], methods=[m.strip() for m in methods.split(",") if m.strip()],
        k=k if k == "auto" else int(k), map_method=map_method, components=components, seed=seed, device=device)
    typer.echo(written["markdown"].read_text().split("\n![")[0])
    typer.echo(f"written: {written['markdown']}, {written['html']}")


@app.command()
@_friendly
def evaluate(
    models: list[str] | None = typer.Argument(None, help="Model folders, names under models/, or 'latest' (default)."),
    split: str = typer.Option("test", "--split", help="Split to score (an unsplit {real,fake}/ folder: all)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="ROC, PR, confusion and PCA scatter PNGs."),
    data: list[Path] | None = typer.Option(
        None, "--data", help="Dataset root to score (default: the model's own). Repeat it, or name several "
        "models, for a cross-dataset matrix (markdown, HTML, heatmap)."),
    groups: Path | None = typer.Option(None, "--groups", help="CSV path,group for per-group rows (own data)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the matrix (default reports/matrix)."),
    explain: int = typer.Option(0, "--explain", min=0, help="Add a gallery of the N most confident true positives, "
                                "false positives and false negatives with heatmaps (<report>-gallery/index.html)."),
    explain_method: str = typer.Option("auto", "--explain-method", help="Heatmap method (see featlab explain)."),
    device: str = typer.Option("auto", "--device"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow a featlab 0.1 SVM folder (model.joblib: "
                                      "a pickle, which runs code when loaded). Only for folders you made."),
    ray: str | None = RayOption,
    workdir: Path | None = WorkdirOption,
) -> None:
    """Evaluate saved models (SVM or CNN) on a split of any dataset: JSON report, terminal table and plots.

    An SVM's missing embeddings are extracted into its own feature cache (shared images cost
    nothing) without touching the index of the data it was trained on.
    """
    for root in data or []:
        existing_dir(root)
    check_device(device), check_ray(ray)
    from featlab.detectors.modelfile import resolve_model
    from featlab.evaluation.evaluate import evaluate_matrix, evaluate_model
    from featlab.reports.report import print_metrics

    ws = _workspace(workdir)
    folders = [resolve_model(m, ws.models) for m in (models or ["latest"])]
    roots = list(data or [])
    if len(folders) > 1 or len(roots) > 1:
        if not roots:
            raise typer.BadParameter("a matrix needs --data for every test set", param_hint="--data")
        table, written = evaluate_matrix(folders, roots, ws, split=split, out=out, device=device,
                                         trust_pickle=trust_pickle, ray=ray)
        typer.echo(written["markdown"].read_text())
        typer.echo(f"written: {written['markdown']}, {written['html']}, {written['png']}")
        return
    report, path = evaluate_model(folders[0], ws, split=split, plots=plots, data_root=str(roots[0]) if roots else None,
                                  device=device, trust_pickle=trust_pickle, groups_csv=str(groups) if groups else None,
                                  explain=explain, explain_method=explain_method, ray=ray)
    typer.echo(print_metrics(report))
    typer.echo(f"report: {path}")
    if report.get("gallery"):
        typer.echo(f"gallery: {report['gallery']}")


@app.command()
@_friendly
def predict(
    model: str = typer.Argument(..., help="Model folder, a name under models/, or 'latest'."),
    target: Path = typer.Argument(..., help="An image file or a folder (any layout)."),
    out: Path | None = typer.Option(None, "--out", help="Write path,score,label CSV here."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow a featlab 0.1 SVM folder (a pickle)."),
    ray: str | None = RayOption,
    workdir: Path | None = WorkdirOption,
) -> None:
    """Classify images with a saved SVM or CNN model; unreadable files are listed, not fatal.

    Exits 1 when nothing could be classified. A CNN needs no writable work folder (an SVM caches its
    embeddings there)."""
    existing_path(target)
    check_device(device), check_ray(ray)
    from featlab.detectors.modelfile import read_model_meta, resolve_model
    from featlab.evaluation.evaluate import predict_paths

    ws = _workspace(workdir, writable=False)
    folder = resolve_model(model, ws.models)
    if read_model_meta(folder).get("kind") in ("svm", "oneclass"):
        ws.ensure_writable()
    table = predict_paths(folder, target, ws, batch_size=batch_size, device=device, trust_pickle=trust_pickle, ray=ray)
    if out:
        from featlab.core.fileio import atomic_write_text

        atomic_write_text(out, table.to_csv(index=False))
    ok = table[table.status == "ok"]
    for row in ok.head(20 if out else len(ok)).itertuples():
        typer.echo(f"{row.label:<5} {row.score:+.4f}  {row.path}")
    for row in table[table.status != "ok"].itertuples():
        typer.echo(f"skipped: {row.path}: {row.reason}")
    typer.echo(f"{len(ok)} classified ({(ok.label == 'fake').sum()} fake), {len(table) - len(ok)} skipped"
               + (f"; written to {out}" if out else ""))
    if ok.empty:
        raise FeatlabError(f"no image in {target} could be classified ({len(table)} skipped)")


@app.command()
@_friendly
def explain(
    model: str = typer.Argument(..., help="Model folder, a name under models/, or 'latest'."),
    target: Path = typer.Argument(..., help="An image file or a folder (any layout)."),
    out: Path = typer.Option(..., "--out", help="Folder for the overlay PNGs, explanations.csv and index.html."),
    method: str = typer.Option("auto", "--method", help="auto (CNN: gradcam, SVM: occlusion), gradcam, gradcam++, "
                               "occlusion or gradient."),
    patch: int = typer.Option(48, "--patch", min=1, help="Occlusion patch side, in input pixels."),
    stride: int = typer.Option(24, "--stride", min=1, help="Occlusion stride, in input pixels."),
    fill: str = typer.Option("mean", "--fill", help="Occlusion fill: mean (the image's mean colour) or blur."),
    device: str = typer.Option("auto", "--device"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow a featlab 0.1 SVM folder (a pickle)."),
    workdir: Path | None = WorkdirOption,
) -> None:
    """Heatmaps of what made a model call each face fake, on the image, with an index HTML page.

    CNNs: Grad-CAM / Grad-CAM++; SVMs: occlusion sensitivity through the normal extraction
    path (its cost is printed first) or gradients through a differentiable copy of the pipeline.
    Unreadable files are listed, not fatal.
    """
    existing_path(target)
    check_device(device)
    from featlab.data.dataset import scan_images
    from featlab.detectors.detector import load_detector
    from featlab.detectors.modelfile import resolve_model
    from featlab.evaluation.explain import explain_target, forward_passes, resolve_method

    ws = _workspace(workdir)
    detector = load_detector(resolve_model(model, ws.models), device=device, trust_pickle=trust_pickle)
    scanned = scan_images(target)
    for row in scanned[scanned.status != "ok"].itertuples():
        typer.echo(f"skipped: {row.path}: {row.reason}")
    paths = list(scanned.path[scanned.status == "ok"])
    chosen = resolve_method(detector, method)
    typer.echo(f"explaining {len(paths)} image(s) with {chosen}: {forward_passes(detector, chosen, len(paths), patch, stride)}"
               f" forward passes of {detector.name}")
    index, explanations, seconds = explain_target(detector, paths, out, chosen, patch, stride, fill)
    for e in explanations:
        if e.heatmap is None:
            typer.echo(f"skipped: {e.path}: {e.reason}")
        else:
            typer.echo(f"{e.verdict:<5} {e.score:+.4f}  {e.path}")
    done = sum(e.heatmap is not None for e in explanations)
    typer.echo(f"{done} explained, {len(explanations) - done} skipped in {seconds:.1f} s; gallery: {index}")


@app.command()
@_friendly
def attack(
    models: list[str] = typer.Argument(..., help="Model folders or names under models/ (SVM or CNN); with several, "
                                       "each one's adversarials are also scored by the others (transfer)."),
    data: Path = typer.Option(..., "--data", help="Dataset root."),
    method: str = typer.Option("pgd", "--attack", help="pgd or fgsm (torchattacks), L-inf, white-box."),
    eps: str = typer.Option("0,1/255,2/255,4/255,8/255", "--eps", help="Budgets, fractions of the pixel range."),
    steps: int = typer.Option(10, "--steps", min=1, help="PGD iterations."),
    restarts: int = typer.Option(1, "--restarts", min=1, help="PGD random restarts (the most successful is kept)."),
    n_images: int = typer.Option(200, "--n-images", min=2, help="Seeded, class-balanced subset of the split."),
    attack_reals: bool = typer.Option(False, "--attack-reals", help="Also push the reals towards 'fake'."),
    split: str = typer.Option("test", "--split"),
    seed: int = typer.Option(0, "--seed"),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default <workdir>/reports/attack)."),
    device: str = typer.Option("auto", "--device"),
    workdir: Path | None = WorkdirOption,
) -> None:
    """Adversarial evaluation: ROC-AUC, accuracy and attack success rate per budget, in memory, after PNG and after
    JPEG q90; SVMs are attacked through a differentiable torch copy of the whole detector."""
    existing_dir(data)
    check_device(device)
    from featlab.detectors.modelfile import resolve_model
    from featlab.evaluation.attack import AttackSettings, parse_eps, run_attack

    ws = _workspace(workdir)
    settings = AttackSettings(attack=method, eps=parse_eps(eps), steps=steps, restarts=restarts, n_images=n_images,
                              attack_reals=attack_reals, split=split, seed=seed)
    table, written = run_attack([resolve_model(m, ws.models) for m in models], data, out or ws.reports / "attack",
                                settings, device=device, progress=typer.echo)
    typer.echo(f"written: {written['markdown']}, {written['html']}")


@app.command()
@_friendly
def compare(
    reports: list[Path] | None = typer.Argument(None, help="Report JSON files (default: every test report)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for comparison.md/.html (default reports/)."),
    figures: str = typer.Option("", "--figures", help="Also save the page's figures as svg and/or pdf "
                                "(comma-separated) under OUT/figures/, for papers."),
    workdir: Path | None = WorkdirOption,
) -> None:
    """Put every model's test report side by side (markdown here, HTML with plots in --out)."""
    from featlab.reports.report import load_reports, write_comparison

    ws = _workspace(workdir, writable=out is None)
    paths = list(reports or sorted(ws.reports.glob("*-test.json")))
    if not paths:
        raise FeatlabError(f"no reports given and none in {ws.reports}; run featlab fit-svm / evaluate first")
    loaded = load_reports(paths)
    formats = tuple(f.strip() for f in figures.split(",") if f.strip())
    md, page, markdown = write_comparison(loaded, out or ws.reports, figure_formats=formats)
    from featlab.reports.page import summary_lines
    from featlab.reports.report import compare_reports

    for line in summary_lines(loaded, compare_reports(loaded)):
        typer.echo(line)
    typer.echo(markdown)
    typer.echo(f"written: {md}, {page}")


@app.command()
@_friendly
def robustness(
    models: list[str] = typer.Argument(..., help="Model folders or names under models/ (SVM and CNN alike)."),
    data: Path = typer.Option(..., "--data", help="Dataset root; its --split is perturbed and scored."),
    split: str = typer.Option("test", "--split"),
    jpeg: str | None = typer.Option(None, "--jpeg", help="JPEG qualities, e.g. 100,90,70,50,30."),
    blur: str | None = typer.Option(None, "--blur", help="Gaussian sigmas in pixels, e.g. 0,1,2,3,4."),
    resize: str | None = typer.Option(None, "--resize", help="Down-then-up factors, e.g. 1,0.75,0.5."),
    noise: str | None = typer.Option(None, "--noise", help="Gaussian noise std on 0-1 pixels, e.g. 0,0.01,0.03."),
    seed: int = typer.Option(0, "--seed", help="Seed mixed into the per-image noise."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default reports/robustness)."),
    device: str = typer.Option("auto", "--device"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle"),
    workdir: Path | None = WorkdirOption,
) -> None:
    """Score models on perturbed copies of a split (JPEG, blur, resize, noise): tables and curves."""
    existing_dir(data)
    check_device(device)
    from featlab.data.perturb import parse_levels
    from featlab.detectors.modelfile import resolve_model
    from featlab.evaluation.robustness import run_robustness

    sweeps = {kind: parse_levels(kind, text, seed) for kind, text in
              (("jpeg", jpeg), ("blur", blur), ("resize", resize), ("noise", noise)) if text}
    if not sweeps:
        raise typer.BadParameter("give at least one of --jpeg, --blur, --resize, --noise")
    import time as _time

    ws = _workspace(workdir)
    folders = [resolve_model(m, ws.models) for m in models]
    target = out or ws.reports / "robustness"
    started = _time.perf_counter()
    table = run_robustness(folders, data, sweeps, ws, split=split, out=target, device=device,
                           trust_pickle=trust_pickle)
    typer.echo((target / "robustness.md").read_text())
    typer.echo(f"written: {target} ({len(table)} rows) in {_time.perf_counter() - started:.1f} s")


@app.command()
@_friendly
def benchmark(
    data: Path = typer.Option(..., "--data", help="Dataset root ({train,valid,test}/{real,fake}/)."),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default <workdir>/benchmark)."),
    backbones: str = typer.Option("auto", "--backbones", help="Comma-separated backbones for the SVM family."),
    recipes: str = typer.Option(
        "", "--recipes", help="Feature recipes to compare on valid, ';'-separated, each "
        "layers[:pooling[:view[:flip]]], e.g. 'pool;layer3:avg+std;layer2,layer3:avg+std:native:flip'."),
    archs: str = typer.Option("resnet50-opennsfw", "--archs", help="Comma-separated CNN archs ('' for none)."),
    pca: str = typer.Option("256", "--pca"),
    c: str = typer.Option("0.1,1,10", "--C"),
    epochs: int = typer.Option(10, "--epochs", min=1),
    freeze_epochs: int = typer.Option(2, "--freeze-epochs", min=0),
    lr: float = typer.Option(1e-3, "--lr", min=0.0),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    image_size: int | None = typer.Option(None, "--image-size"),
    precision: str = typer.Option("auto", "--precision", help="CNN training precision: auto, fp32, bf16, fp16."),
    seed: int = typer.Option(0, "--seed"),
    explain: int = typer.Option(0, "--explain", min=0, help="Heatmap gallery of the N most confident hits and errors "
                                "per model, linked from comparison.html."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    workdir: Path | None = WorkdirOption,
) -> None:
    """Run the whole comparison (extract -> fit-svm -> train-cnn -> evaluate -> compare) into one report folder."""
    existing_dir(data)
    check_precision(precision)
    from featlab.detectors.classical import parse_grid, parse_pca
    from featlab.evaluation.benchmark import BenchmarkSettings, run_benchmark
    from featlab.features.backbones import get_spec, resolve_auto
    from featlab.features.recipe import parse_recipe_list

    ws = _workspace(workdir)
    names = [b.strip() for b in backbones.split(",") if b.strip()]
    if not names:
        raise typer.BadParameter("name at least one backbone", param_hint="--backbones")
    first = get_spec(resolve_auto(names[0])[0])
    settings = BenchmarkSettings(
        backbones=names, recipes=[r.as_dict() for r in parse_recipe_list(first, recipes)],
        archs=[a.strip() for a in archs.split(",") if a.strip()], pca=parse_pca(pca), C=parse_grid(c, "C"),
        epochs=epochs, freeze_epochs=freeze_epochs, lr=lr, batch_size=batch_size, image_size=image_size,
        precision=precision, seed=seed, explain=explain,
    )
    summary = run_benchmark(data, out or ws.root / "benchmark", ws, settings, progress=progress, echo=typer.echo)
    typer.echo(f"written: {Path(summary['comparison']['html']).parent} (results.md, comparison.html, benchmark.json) "
               f"in {summary['wall_seconds'] / 60:.1f} min")


def main() -> None:
    app()


def _workspace(workdir: Path | None, writable: bool = True) -> Workspace:
    """The work folder, checked writable before any long work starts (``writable=False``: commands that only
    read it, which then work on a read-only work folder too)."""
    ws = Workspace.resolve(workdir)
    return ws.ensure_writable() if writable else ws
