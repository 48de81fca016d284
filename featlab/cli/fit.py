"""``featlab fit-svm``, ``fit-oneclass``, ``train-cnn``, ``train-ae``: make detectors, then report on them."""

from __future__ import annotations

from pathlib import Path

import typer

from featlab.cli.common import (
    FACE_MARGIN_OPTION,
    FACE_SIZE_OPTION,
    FACES_OPTION,
    WORKDIR_OPTION,
    choose_face_stage,
    friendly,
    open_workspace,
)
from featlab.core.checks import check_device, check_precision, existing_dir
from featlab.detectors.configs import AETrainConfig, Augment, SVMFitConfig, TrainConfig, grid_text

app = typer.Typer()  # its commands are merged into the featlab command (featlab.cli)

# Option defaults come from the config objects: one default per setting (tests/detectors/test_configs.py checks them all).
SVM, CNN, AUG, AE = SVMFitConfig(), TrainConfig(), Augment(), AETrainConfig()


@app.command("fit-svm")
@friendly
def fit_svm_command(
    pca: str = typer.Option(str(SVM.pca), "--pca", help="PCA components (int), variance fraction (e.g. 0.95) or 0 for none."),
    kernel: str = typer.Option(SVM.kernel, "--kernel", help="rbf or linear (solver svc)."),
    c: str = typer.Option(grid_text(SVM.C), "--C", help="C value, or comma-separated grid searched on the valid split."),
    gamma: str = typer.Option(grid_text(SVM.gamma), "--gamma", help="RBF gamma: 'scale', a number, or a comma-separated grid."),
    class_weight: str | None = typer.Option(SVM.class_weight, "--class-weight", help="'balanced' for unbalanced classes."),
    probability: bool = typer.Option(SVM.probability, "--probability", help="Platt-calibrate scores into p(fake)."),
    solver: str = typer.Option(
        SVM.solver, "--solver", help="svc: exact kernel SVM, best up to ~20-50k train images (fit time grows ~n^2). "
        "linear: LinearSVC, linear time, for large sets. nystroem: RBF kernel approximation + LinearSVC, "
        "near-RBF accuracy at linear cost, for large sets."
    ),
    seed: int = typer.Option(SVM.seed, "--seed"),
    augment: str = typer.Option(SVM.augment, "--augment", help="Add one augmented copy of every training image: jpeg, blur "
                                "or jpeg,blur (CNNDetection-style random draws, seeded; extracted once, cached)."),
    experts: str = typer.Option(SVM.experts, "--experts", help="auto: one calibrated SVM per recorded training "
                                "source (featlab data build's manifest.csv, or groups.csv rows source=NAME), mixed by "
                                "a learned gate and blended with a smooth SVM (--smooth-c), when every source has enough "
                                "images of each class (a training set that records none is one source); one SVM "
                                "otherwise. source: experts on recorded sources or an error saying why not. none: one "
                                "SVM."),
    smooth_c: float = typer.Option(SVM.smooth_C, "--smooth-c", help="C of the experts' smooth SVM (fitted on every "
                                   "training image, averaged half and half with the experts; transfers across "
                                   "sources better than they do). 0: none."),
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
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Fit StandardScaler -> PCA -> SVM on the cached train split, tune on valid, report on test."""
    from featlab.core.checks import parse_grid, parse_pca

    if class_weight not in (None, "balanced"):
        raise typer.BadParameter("only 'balanced' is supported", param_hint="--class-weight")
    config = SVMFitConfig(pca=parse_pca(pca), kernel=kernel, C=parse_grid(c, "C"),
                          gamma=parse_grid(gamma, "gamma", allow_words=("scale", "auto")), class_weight=class_weight,
                          probability=probability, solver=solver, augment=augment, experts=experts, smooth_C=smooth_c,
                          seed=seed)
    # a typo is refused above, before torch is imported
    from featlab.detectors.features_detector import fit_svm_detector
    from featlab.detectors.streaming import parse_memory
    from featlab.detectors.svm import features_for_fit
    from featlab.evaluation.evaluate import report_splits
    from featlab.reports.page import params_in_words

    ws = open_workspace(workdir)
    cache = features_for_fit(ws.features, backbone, features, data)
    detector, result = fit_svm_detector(cache, ws, name=name, config=config, n_jobs=jobs,
                                        max_memory=parse_memory(max_memory), stream=stream, data_root=data, force=force)
    typer.echo(f"features: {cache.folder.name} ({cache.meta['weights_info'].get('source')})")
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"chosen {params_in_words(result.best_params)} by {result.selection}"
               + (f" (balanced accuracy {result.selection_score:.4f})" if result.selection_score == result.selection_score
                  else "") + f"; fit {result.fit_seconds:.1f} s, search {result.search_seconds:.1f} s")
    typer.echo(f"model: {detector.folder}")
    _print_reports(report_splits(detector, ws))


def _print_reports(reports) -> None:
    from featlab.reports.report import print_metrics

    for split, report, path in reports:
        if split == "test":
            typer.echo(print_metrics(report))
        typer.echo(f"report ({split}): {path}")


@app.command("train-cnn")
@friendly
def train_cnn_command(
    arch: str = typer.Option(CNN.arch, "--arch", help="auto (resnet50 when its torchvision weights are on disk, "
                             "else resnet50-opennsfw, as extract --backbone auto), resnet18, resnet50, densenet121; offline "
                             "pretrained: resnet50-opennsfw, efficientnet-lite0/1/2 (ImageNet), dinov2-vits14 "
                             "(self-supervised ViT; image sides multiples of 14); or custom (small CNN from scratch)."),
    data: Path = typer.Option(..., "--data", help="Dataset root ({train,valid,test}/{real,fake}/)."),
    out: Path | None = typer.Option(None, "--out", help="Model folder (default models/cnn-ARCH-TIME)."),
    weights: str = typer.Option(CNN.weights, "--weights", help="Pretrained weights: default, a file, or none."),
    epochs: int = typer.Option(CNN.epochs, "--epochs", min=1),
    batch_size: int = typer.Option(CNN.batch_size, "--batch-size", min=1),
    lr: float = typer.Option(CNN.lr, "--lr"),
    weight_decay: float = typer.Option(CNN.weight_decay, "--weight-decay"),
    optimizer: str = typer.Option(CNN.optimizer, "--optimizer", help="adamw or sgd."),
    schedule: str = typer.Option(CNN.schedule, "--schedule", help="cosine or step."),
    freeze_epochs: int = typer.Option(CNN.freeze_epochs, "--freeze-epochs", min=0,
                                      help="Train only the new head for the first N epochs."),
    head_layers: str = typer.Option(
        CNN.head_layers, "--head-layers", help="What the new head sees: pool (the backbone's pooled output), auto (the "
        "SVM family's default stages, mean+std pooled) or stage names."),
    view: str | None = typer.Option(CNN.view, "--view", help="native (default for pretrained archs: no resampling), "
                                    "crop or full."),
    backbone_lr_scale: float = typer.Option(
        CNN.backbone_lr_scale, "--backbone-lr-scale", min=0.0, help="Pretrained layers: each weight tensor's learning rate is this "
        "times its RMS size (open_nsfw's folded batch norm makes layer scales differ 1000-fold)."),
    warmup_steps: int = typer.Option(CNN.warmup_steps, "--warmup-steps", min=0, help="Linear warm-up after unfreezing."),
    clip_grad: float = typer.Option(CNN.clip_grad, "--clip-grad", min=0.0, help="Max gradient norm (0 = off)."),
    image_size: int | None = typer.Option(CNN.image_size, "--image-size", help="Override resize/crop (e.g. 64 for quick runs)."),
    precision: str = typer.Option(CNN.precision, "--precision", help="fp32, or bf16/fp16 autocast (mixed precision)."),
    patience: int = typer.Option(CNN.patience, "--patience", help="Early stopping: epochs without a better valid ROC-AUC."),
    flip: bool = typer.Option(AUG.flip, "--flip/--no-flip"),
    crop_scale: float = typer.Option(AUG.crop_scale, "--crop-scale", help="Random crop keeps >= this fraction (1 = off)."),
    color_jitter: float = typer.Option(AUG.color_jitter, "--color-jitter"),
    jpeg_prob: float = typer.Option(AUG.jpeg_prob, "--jpeg-prob", help="JPEG re-compression augmentation probability."),
    adversarial: str = typer.Option(CNN.adversarial, "--adversarial", help="Adversarial training: pgd or fgsm (Madry-style: each "
                                    "batch doubled with its L-inf adversarial copies, made in pixel space)."),
    adv_eps: str = typer.Option(f"{round(CNN.adv_eps * 255)}/255", "--adv-eps", help="Adversarial budget, e.g. 4/255."),
    adv_steps: int = typer.Option(CNN.adv_steps, "--adv-steps", min=1, help="PGD steps per batch."),
    blur_prob: float = typer.Option(AUG.blur_prob, "--blur-prob", help="Gaussian blur augmentation probability "
                                    "(with --jpeg-prob 0.5: CNNDetection's Blur+JPEG(0.5) augmentation)."),
    label_smoothing: float = typer.Option(CNN.label_smoothing, "--label-smoothing", min=0.0, max=0.49,
                                          help="Targets eps/2 and 1 - eps/2 instead of 0 and 1."),
    train_stages: int = typer.Option(CNN.train_stages, "--train-stages", min=0, help="After the head-only epochs, "
                                     "train only the backbone's last N stages (0: all), e.g. 2 for the last two ViT "
                                     "blocks of dinov2-vits14 after a linear probe."),
    seed: int = typer.Option(CNN.seed, "--seed"),
    workers: int = typer.Option(CNN.workers, "--workers", min=0),
    device: str = typer.Option(CNN.device, "--device"),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run in --out from its last epoch."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    faces: str = FACES_OPTION,
    face_size: int | None = FACE_SIZE_OPTION,
    face_margin: float | None = FACE_MARGIN_OPTION,
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Fine-tune a CNN baseline on the same splits, then report on the test split."""
    existing_dir(data)
    check_device(device), check_precision(precision)
    import time

    from featlab.detectors.adversarial import parse_eps
    from featlab.detectors.network_detector import train_cnn_detector
    from featlab.evaluation.evaluate import report_splits
    from featlab.features.backbones import resolve_auto

    ws = open_workspace(workdir)
    arch, reason = resolve_auto(arch)
    if reason:
        typer.echo(f"arch: {arch} ({reason})")
    stage = choose_face_stage(faces, data, face_size or 256, 0.2 if face_margin is None else face_margin)
    config = TrainConfig(
        arch=arch, weights=weights, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        optimizer=optimizer, schedule=schedule, freeze_epochs=freeze_epochs, image_size=image_size,
        precision=precision, patience=patience, seed=seed, workers=workers, device=device, view=view,
        head_layers=head_layers, backbone_lr_scale=backbone_lr_scale, warmup_steps=warmup_steps,
        clip_grad=clip_grad or None, adversarial=adversarial, adv_eps=parse_eps(adv_eps)[0], adv_steps=adv_steps,
        augment=Augment(flip=flip, crop_scale=crop_scale, color_jitter=color_jitter, jpeg_prob=jpeg_prob,
                        blur_prob=blur_prob), faces=stage, label_smoothing=label_smoothing, train_stages=train_stages,
    )
    folder = out or ws.models / f"cnn-{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    detector = train_cnn_detector(config, data, folder, ws, resume=resume, progress=progress, echo=typer.echo)
    typer.echo(f"model: {folder}")
    _print_reports(report_splits(detector, ws, ("test",), data_root=str(data)))


@app.command("fit-oneclass")
@friendly
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
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """A one-class detector on cached embeddings, fitted on the train split's REAL faces only: fakes it has
    never seen score as anomalies. Evaluate, robustness and compare treat it like any model."""
    from featlab.detectors.classical import parse_pca
    from featlab.detectors.features_detector import fit_oneclass_detector
    from featlab.detectors.svm import features_for_fit
    from featlab.evaluation.evaluate import report_splits

    ws = open_workspace(workdir)
    cache = features_for_fit(ws.features, backbone, [features] if features else [])
    detector = fit_oneclass_detector(cache, ws, method, parse_pca(pca), seed, name, data, force=force)
    typer.echo(f"features: {cache.folder.name}; model: {detector.folder}")
    _print_reports(report_splits(detector, ws, ("test",)))


@app.command("fit-ensemble")
@friendly
def fit_ensemble_command(
    models: list[str] = typer.Argument(..., help="Two or more model folders or names under models/ (e.g. an SVM and "
                                       "a fine-tuned CNN)."),
    data: Path = typer.Option(..., "--data", help="Dataset whose valid split scales the members (its test split is "
                              "reported)."),
    name: str | None = typer.Option(None, "--name", help="Model folder name under models/."),
    force: bool = typer.Option(False, "--force", help="Replace an existing model folder --name (and its reports)."),
    device: str = typer.Option("auto", "--device"),
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """A score-level ensemble: each member's score minus its threshold, divided by its spread on the valid split,
    averaged (fake at >= 0). A model kind of its own: evaluate, predict, robustness and compare take it."""
    existing_dir(data)
    check_device(device)
    from featlab.detectors.base import load
    from featlab.detectors.ensemble import fit_ensemble
    from featlab.evaluation.evaluate import report_splits

    ws = open_workspace(workdir)
    detector = fit_ensemble([load(m, ws, device=device) for m in models], data, ws, name=name, force=force)
    for member in detector.meta["members"]:
        typer.echo(f"member {member['name']} ({member['kind']}): scale {member['scale']:.4g}")
    typer.echo(f"model: {detector.folder}")
    _print_reports(report_splits(detector, ws, ("valid", "test"), data_root=str(data)))


@app.command("train-ae")
@friendly
def train_ae_command(
    data: Path = typer.Option(..., "--data", help="Dataset root ({train,valid,test}/{real,fake}/)."),
    out: Path | None = typer.Option(None, "--out", help="Model folder (default <workdir>/models/ae-...)."),
    real_only: bool = typer.Option(AE.real_only, "--real-only", help="Train on real faces only: a one-class detector "
                                   "(score = reconstruction error above the train reals' 95th percentile)."),
    image_size: int = typer.Option(AE.image_size, "--image-size", min=16, help="Side in pixels (multiple of 16)."),
    latent_dim: int = typer.Option(AE.latent_dim, "--latent-dim", min=2),
    epochs: int = typer.Option(AE.epochs, "--epochs", min=1),
    batch_size: int = typer.Option(AE.batch_size, "--batch-size", min=1),
    lr: float = typer.Option(AE.lr, "--lr", min=0.0),
    seed: int = typer.Option(AE.seed, "--seed"),
    device: str = typer.Option(AE.device, "--device"),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run exactly where it stopped."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Train a small convolutional autoencoder (no labels): latents for `featlab cluster --ae`, and with
    --real-only a one-class detector that `evaluate`, `robustness` and `compare` score like any model."""
    import time

    from featlab.detectors.autoencoder import train_ae

    ws = open_workspace(workdir)
    config = AETrainConfig(image_size=image_size, latent_dim=latent_dim, epochs=epochs, batch_size=batch_size, lr=lr,
                           real_only=real_only, seed=seed, device=device)
    folder = out or ws.models / f"ae-{'real-' if real_only else ''}{time.strftime('%Y%m%d-%H%M%S')}"
    train_ae(config, data, folder, resume=resume, progress=progress, echo=typer.echo)
    typer.echo(f"model: {folder}")
