"""featlab: tell real face photos from DeepFake / GAN-made / edited ones.

Data flow, one module per stage (imports only run "down" this list)::

    errors, versions      shared helpers
    data                  dataset discovery, manifest, robust image decoding
    backbones             registry of pretrained feature extractors + their preprocessing
    opennsfw              the offline ResNet-50 (Yahoo open_nsfw) backbone
    cache, extract        batched extraction into an on-disk embedding cache
    classical             StandardScaler -> PCA -> SVM pipeline, model files with hash checks
    hashmemo, distributed stat-keyed hash memo; extraction on Ray Data (optional)
    cnn, autoencoder      fine-tuned CNN baselines; the convolutional autoencoder
    streaming             out-of-core fit of the classical pipeline
    unsupervised          clustering of embeddings / latents, one-class detectors
    adversarial           pixel-space L-inf attacks (torchattacks) for evaluation and training
    detector              a saved model as a function of pixels (incl. the SVM's torch copy)
    explain, attack       heatmaps and galleries; adversarial evaluation
    metrics, report       honest metrics, JSON reports, plots, comparison tables
    workspace, cli        the shared work folder and the thin typer CLI
"""

__version__ = "0.2.0"

#: Class mapping used everywhere (fake is the positive class).
LABELS: dict[str, int] = {"real": 0, "fake": 1}
CLASS_NAMES: tuple[str, ...] = ("real", "fake")

#: The public Python API (imported on first use, so ``import featlab`` stays light).
_PUBLIC = {
    "DeepFeatures": "featlab.estimators",
    "CNNClassifier": "featlab.estimators",
    "SavedModel": "featlab.estimators",
    "load_model": "featlab.estimators",
    "FeatureRecipe": "featlab.recipe",
    "scan_dataset": "featlab.data",
    "Perturbation": "featlab.perturb",
    "Workspace": "featlab.workspace",
    "FeatlabError": "featlab.errors",
    "BenchmarkSettings": "featlab.benchmark",
    "run_benchmark": "featlab.benchmark",
    "evaluate_model": "featlab.evaluate",
    "evaluate_matrix": "featlab.evaluate",
    "predict_paths": "featlab.evaluate",
    "run_robustness": "featlab.robustness",
    "extract_dataset": "featlab.extract",
    "fit_svm": "featlab.classical",
    "build_pipeline": "featlab.classical",
    "train_cnn": "featlab.cnn",
    "TrainConfig": "featlab.cnn",
    "load_detector": "featlab.detector",
    "explain_paths": "featlab.explain",
    "AttackSettings": "featlab.attack",
    "run_attack": "featlab.attack",
    "cluster_dataset": "featlab.unsupervised",
    "fit_oneclass_from_cache": "featlab.unsupervised",
    "AETrainConfig": "featlab.autoencoder",
    "train_ae": "featlab.autoencoder",
}
__all__ = ["CLASS_NAMES", "LABELS", "__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'featlab' has no attribute {name!r}")
