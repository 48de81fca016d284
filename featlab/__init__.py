"""featlab: tell real face photos from DeepFake / GAN-made / edited ones.

One subpackage per layer; imports only go down this list (an import-linter contract, run by ``make lint``
and by ``tests/test_architecture.py``, which also refuses any import circle)::

    cli          the thin typer command line
    service      featlab serve: detectors loaded once, scored over HTTP (FastAPI)
    evaluation   evaluate / predict, robustness, attack, explain, benchmark, estimators   | analysis: clustering
    reports      the JSON report schema, tables, plots, the comparison page
    detectors    model folders and the one loaded-model object (featlab.load -> Detector, a loader per kind):
                 SVM, one-class, CNN, autoencoder, their torch copies, attacks
    features     backbone registry, preprocessing, recipes, the embedding cache, extraction (local, Ray)
    data         datasets and manifests, groups, perturbations, the hash memo
    core         errors, file helpers, versions, the work folder, early checks, metrics

The public API below is imported on first use, so ``import featlab`` stays light.
"""

__version__ = "0.2.0"

#: Class mapping used everywhere (fake is the positive class).
LABELS: dict[str, int] = {"real": 0, "fake": 1}
CLASS_NAMES: tuple[str, ...] = ("real", "fake")

#: The public Python API (imported on first use, so ``import featlab`` stays light).
_PUBLIC = {
    "load": "featlab.detectors.base",
    "Detector": "featlab.detectors.base",
    "register_kind": "featlab.detectors.base",
    "DeepFeatures": "featlab.evaluation.estimators",
    "CNNClassifier": "featlab.evaluation.estimators",
    "SavedModel": "featlab.evaluation.estimators",
    "load_model": "featlab.evaluation.estimators",
    "FeatureRecipe": "featlab.features.recipe",
    "scan_dataset": "featlab.data.dataset",
    "Perturbation": "featlab.data.perturb",
    "Workspace": "featlab.core.workspace",
    "FeatlabError": "featlab.core.errors",
    "BenchmarkSettings": "featlab.evaluation.benchmark",
    "run_benchmark": "featlab.evaluation.benchmark",
    "evaluate_model": "featlab.evaluation.evaluate",
    "evaluate_matrix": "featlab.evaluation.evaluate",
    "predict_paths": "featlab.evaluation.evaluate",
    "run_robustness": "featlab.evaluation.robustness",
    "extract_dataset": "featlab.features.extract",
    "fit_svm": "featlab.detectors.classical",
    "build_pipeline": "featlab.detectors.classical",
    "train_cnn": "featlab.detectors.cnn",
    "TrainConfig": "featlab.detectors.configs",
    "SVMFitConfig": "featlab.detectors.configs",
    "load_detector": "featlab.detectors.detector",
    "explain_paths": "featlab.evaluation.explain",
    "AttackSettings": "featlab.evaluation.attack",
    "run_attack": "featlab.evaluation.attack",
    "cluster_dataset": "featlab.analysis.clustering",
    "fit_oneclass_from_cache": "featlab.detectors.oneclass",
    "AETrainConfig": "featlab.detectors.configs",
    "train_ae": "featlab.detectors.autoencoder",
}
__all__ = ["CLASS_NAMES", "LABELS", "__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'featlab' has no attribute {name!r}")
