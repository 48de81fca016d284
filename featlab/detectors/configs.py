"""The settings of every fit and training, as dataclasses that validate themselves (``__post_init__``).

One default per setting, here: the CLI (``featlab fit-svm``, ``train-cnn``, ``train-ae``) takes its
option defaults from these classes, and a test checks that they agree. Light on purpose (no torch), so
the command line can read them at start-up. Errors name the setting, in one line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from featlab.core.errors import FeatlabError
from featlab.data.faces import FaceStage

#: CNN architectures ``train-cnn`` builds (``auto``: resnet50 when its torchvision weights are on disk, else
#: the offline resnet50-opennsfw, as ``extract --backbone auto``).
ARCHS = ("resnet18", "resnet50", "densenet121", "resnet50-opennsfw", "efficientnet-lite0", "efficientnet-lite1",
         "efficientnet-lite2", "dinov2-vits14", "custom")
SVM_SOLVERS = ("svc", "linear", "nystroem")
SVM_KERNELS = ("rbf", "linear")
SVM_EXPERTS = ("auto", "source", "none")
AUGMENTS = ("jpeg", "blur")


def grid_text(values: tuple) -> str:
    """A grid of candidate values as the command line writes it: ``(0.1, 1.0, 10.0)`` -> ``"0.1,1,10"``."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise FeatlabError(message)


def _positive_numbers(values, name: str, words: tuple[str, ...] = ()) -> tuple:
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if not values:
        raise FeatlabError(f"{name}: give at least one value")
    for value in values:
        if isinstance(value, str) and value in words:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            allowed = f" or one of {', '.join(words)}" if words else ""
            raise FeatlabError(f"{name} values must be positive numbers{allowed}, got {value!r}")
    return tuple(float(v) if not isinstance(v, str) else v for v in values)


@dataclass
class SVMFitConfig:
    """What an SVM fit (``featlab fit-svm``, :func:`featlab.detectors.svm.fit_from_cache`) is asked to do.

    Parameters
    ----------
    pca : PCA components (int), a variance fraction in (0, 1), or None for no PCA.
    kernel : ``rbf`` or ``linear`` (solver ``svc``).
    C, gamma : candidate values, searched on the valid split when there are several (gamma: numbers,
        ``scale`` or ``auto``).
    class_weight : None or ``balanced``.
    probability : Platt-calibrate the scores into p(fake) (then the threshold is 0.5).
    solver : ``svc`` (exact kernel SVM), ``linear`` (LinearSVC) or ``nystroem`` (RBF approximation + LinearSVC).
    augment : ``""``, ``jpeg``, ``blur`` or ``jpeg,blur``: one augmented copy of every training image.
    nystroem_components : kernel-map size of a streaming (out-of-core) fit.
    experts : ``auto`` (the default: one calibrated SVM expert per recorded training source, mixed by a learned
        gate, and blended with a smooth SVM, :class:`~featlab.detectors.experts.SourceExperts`, when every source
        has enough images of each class; a training set that records no source is one source; one SVM otherwise),
        ``source`` (experts on recorded sources, or an error saying why not) or ``none`` (one SVM).
    smooth_C : C of the experts' smooth SVM (fitted on every training image, p(fake) averaged half and half with
        the experts' mixture); a small C gives a boundary close to the difference of the two classes' kernel means,
        which transfers across sources better than the sharp experts (``None`` or 0: no smooth SVM).
    seed : every random choice of the fit.
    """

    pca: int | float | None = 256
    kernel: str = "rbf"
    C: tuple = (0.1, 1.0, 10.0)
    gamma: tuple = ("scale",)
    class_weight: str | None = None
    probability: bool = False
    solver: str = "svc"
    augment: str = ""
    nystroem_components: int = 1000
    experts: str = "auto"
    smooth_C: float | None = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        pca = self.pca
        _check([
            (pca is None or (isinstance(pca, int) and not isinstance(pca, bool) and pca >= 1)
             or (isinstance(pca, float) and 0 < pca < 1),
             f"pca takes a whole number of components, a variance fraction in (0, 1) or None, got {pca!r}"),
            (self.kernel in SVM_KERNELS, f"kernel must be one of {', '.join(SVM_KERNELS)}, got {self.kernel!r}"),
            (self.solver in SVM_SOLVERS, f"solver must be one of {', '.join(SVM_SOLVERS)}, got {self.solver!r}"),
            (self.class_weight in (None, "balanced"), f"class_weight must be None or 'balanced', got {self.class_weight!r}"),
            (not (unknown := [a for a in self.augment.split(",") if a and a not in AUGMENTS]),
             f"augment: unknown {', '.join(unknown)}; choose from {', '.join(AUGMENTS)}"),
            (self.nystroem_components >= 1, f"nystroem_components must be at least 1, got {self.nystroem_components}"),
            (self.experts in SVM_EXPERTS, f"experts must be one of {', '.join(SVM_EXPERTS)}, got {self.experts!r}"),
            (self.smooth_C is None or (isinstance(self.smooth_C, (int, float)) and not isinstance(self.smooth_C, bool)
                                       and self.smooth_C >= 0),
             f"smooth_C must be a number >= 0 (0: no smooth SVM) or None, got {self.smooth_C!r}"),
        ])
        self.smooth_C = float(self.smooth_C) if self.smooth_C else None
        self.C = _positive_numbers(self.C, "C")
        self.gamma = _positive_numbers(self.gamma, "gamma", ("scale", "auto"))

    def fit_options(self) -> dict:
        """The keyword arguments of :func:`featlab.detectors.classical.fit_svm`."""
        return {"pca": self.pca, "kernel": self.kernel, "C": list(self.C), "gamma": list(self.gamma),
                "class_weight": self.class_weight, "probability": self.probability, "solver": self.solver,
                "smooth_C": self.smooth_C}

    def recorded(self) -> dict:
        """What the model folder records as its options (JSON: lists, not tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k != "seed"}


@dataclass(frozen=True)
class Augment:
    """Training augmentation of a CNN."""

    flip: bool = True
    crop_scale: float = 0.85  # random crop keeps at least this fraction of the side (1 = off)
    color_jitter: float = 0.1  # brightness/contrast/saturation +- fraction (0 = off)
    jpeg_prob: float = 0.0  # CNNDetection-style JPEG re-compression (quality 30-100)
    blur_prob: float = 0.0  # CNNDetection-style Gaussian blur (sigma 0-3)

    def __post_init__(self) -> None:
        _check([
            (0 < self.crop_scale <= 1, f"crop_scale must be in (0, 1], got {self.crop_scale}"),
            (self.color_jitter >= 0, f"color_jitter must be >= 0, got {self.color_jitter}"),
            (0 <= self.jpeg_prob <= 1 and 0 <= self.blur_prob <= 1, "jpeg_prob and blur_prob must be in [0, 1]"),
        ])


@dataclass
class TrainConfig:
    """Settings of one CNN training run (``featlab train-cnn``); every field is recorded in the model folder.

    The defaults are the recipe measured on the real faces (README, "CNN baselines"): two head-only
    epochs, then per-tensor relative steps for the pretrained layers (``backbone_lr_scale``), warm-up,
    gradient clipping, a head on the mid-level stages (``head_layers="auto"``), native-pixel view.
    ``arch="auto"`` is resolved when training starts (see :data:`ARCHS`).
    """

    arch: str = "auto"
    weights: str = "default"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    freeze_epochs: int = 2
    image_size: int | None = None
    precision: str = "fp32"
    patience: int = 3
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    augment: Augment = field(default_factory=Augment)
    view: str | None = None  # None: the arch's default view
    # Pretrained layers take steps relative to their own size: each weight tensor's learning rate is
    # backbone_lr_scale x its RMS magnitude at the start (a LARS-style trust ratio), the new head's is lr.
    backbone_lr_scale: float = 1e-3
    clip_grad: float | None = 1.0  # max gradient norm (None: off)
    warmup_steps: int = 50  # linear warm-up after the backbone is unfrozen (0: off)
    head_layers: str = "auto"  # what the head sees: pool, auto (the SVM's default stages) or stage names
    # Madry-style adversarial training: each batch is doubled with its L-inf adversarial copies
    # (pixel space, uint8; featlab.detectors.adversarial), so the loss is half clean, half adversarial.
    adversarial: str = ""  # "", "pgd" or "fgsm"
    adv_eps: float = 4 / 255
    adv_steps: int = 3
    # Train on the aligned main face of each image (featlab.data.faces.FaceStage; --faces detect): part of the
    # model's preprocessing, so prediction detects and aligns too. None: whole images.
    faces: FaceStage | None = None
    # Targets 0/1 become eps/2 and 1 - eps/2 (Szegedy et al. 2016): keeps the logits from growing without bound.
    label_smoothing: float = 0.0
    # After the head-only epochs, train only the backbone's last N declared stages (0: all of it), e.g. the last
    # ViT blocks of dinov2-vits14 after a linear probe.
    train_stages: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):  # read back from a checkpoint or meta.json
            self.augment = Augment(**self.augment)
        if isinstance(self.faces, dict):
            self.faces = FaceStage.from_dict(self.faces)
        _check([
            (self.arch in ARCHS + ("auto",), f"arch must be one of auto, {', '.join(ARCHS)}, got {self.arch!r}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.backbone_lr_scale >= 0, f"backbone_lr_scale must be >= 0, got {self.backbone_lr_scale}"),
            (0 <= self.freeze_epochs, f"freeze_epochs must be >= 0, got {self.freeze_epochs}"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.clip_grad is None or self.clip_grad > 0, f"clip_grad must be positive or None, got {self.clip_grad}"),
            (self.optimizer in ("adamw", "sgd"), f"optimizer must be adamw or sgd, got {self.optimizer!r}"),
            (self.schedule in ("cosine", "step"), f"schedule must be cosine or step, got {self.schedule!r}"),
            (self.image_size is None or self.image_size >= 16, f"image_size must be >= 16, got {self.image_size}"),
            (self.adversarial in ("", "pgd", "fgsm"), f"adversarial must be pgd or fgsm, got {self.adversarial!r}"),
            (not self.adversarial or 1 / 255 <= self.adv_eps + 1e-9 <= 1,
             f"adv_eps must be at least one grey level (1/255) and at most 1, got {self.adv_eps}"),
            (self.adv_steps >= 1, f"adv_steps must be at least 1, got {self.adv_steps}"),
            (0 <= self.label_smoothing < 0.5, f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}"),
            (self.train_stages >= 0, f"train_stages must be >= 0, got {self.train_stages}"),
        ])


@dataclass
class AETrainConfig:
    """Settings of one ``featlab train-ae`` run; all recorded in the model folder."""

    image_size: int = 64
    latent_dim: int = 128
    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-5
    real_only: bool = False
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        _check([
            (self.image_size >= 16 and self.image_size % 16 == 0,
             f"image_size must be a multiple of 16, at least 16, got {self.image_size}"),
            (self.latent_dim >= 2, f"latent_dim must be at least 2, got {self.latent_dim}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
        ])
