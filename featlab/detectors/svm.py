"""SVM detectors as model folders: fit from the embedding cache, save with metadata, load with checks."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from sklearn.pipeline import Pipeline

from featlab import LABELS, __version__
from featlab.core.errors import FeatlabError
from featlab.core.versions import library_versions, utc_now
from featlab.detectors.classical import FitResult, fit_svm, pca_summary
from featlab.detectors.configs import SVMFitConfig
from featlab.detectors.experts import SourceExperts, expert_sources
from featlab.detectors.modelfile import check_sealed, refuse_existing_model, save_new_model_folder, verified_artifact
from featlab.detectors.streaming import BYTES_PER_VALUE, resident_bytes
from featlab.features.cache import EmbeddingCache, dataset_tag, find_caches

log = logging.getLogger(__name__)

ARTIFACT = "model.skops"
LEGACY_ARTIFACT = "model.joblib"  # featlab 0.1: a pickle, loaded only with trust_pickle=True
#: Every (skops loader, fully qualified type) pair a featlab model file may contain: exactly what featlab's
#: SVM, one-class and streaming fits write, and nothing named by prefix. A type outside it (a numpy or builtins
#: callable, ``os.system``, a ``functools.partial``...) is refused before skops builds any object.
ALLOWED_NODES = frozenset({
    # containers and JSON data (JsonNode decodes with json.loads: data only)
    ("DictNode", "builtins.dict"), ("ListNode", "builtins.list"), ("TupleNode", "builtins.tuple"),
    ("JsonNode", "builtins.str"), ("JsonNode", "builtins.int"), ("JsonNode", "builtins.float"),
    ("JsonNode", "builtins.bool"), ("JsonNode", "builtins.NoneType"),
    ("TypeNode", "builtins.str"),  # a dtype recorded as the type str
    # arrays and numpy scalars (np.load with allow_pickle=False)
    ("NdArrayNode", "numpy.ndarray"), ("NdArrayNode", "numpy.float32"), ("NdArrayNode", "numpy.float64"),
    ("NdArrayNode", "numpy.int32"), ("NdArrayNode", "numpy.int64"), ("NdArrayNode", "numpy.bool_"),
    # the estimators featlab fits
    ("ObjectNode", "sklearn.pipeline.Pipeline"),
    ("ObjectNode", "sklearn.preprocessing._data.StandardScaler"),
    ("ObjectNode", "sklearn.decomposition._pca.PCA"),
    ("ObjectNode", "sklearn.svm._classes.SVC"),
    ("ObjectNode", "sklearn.svm._classes.LinearSVC"),
    ("ObjectNode", "sklearn.kernel_approximation.Nystroem"),
    ("ObjectNode", "sklearn.calibration.CalibratedClassifierCV"),
    ("ObjectNode", "sklearn.calibration._CalibratedClassifier"),
    ("ObjectNode", "sklearn.calibration._SigmoidCalibration"),
    # one-class detectors (featlab.analysis.clustering)
    ("ObjectNode", "sklearn.svm._classes.OneClassSVM"),
    ("ObjectNode", "sklearn.ensemble._iforest.IsolationForest"),
    ("ObjectNode", "sklearn.tree._classes.ExtraTreeRegressor"),
    ("TreeNode", "sklearn.tree._tree.Tree"),
    ("ObjectNode", "sklearn.covariance._elliptic_envelope.EllipticEnvelope"),
    # streaming fit (featlab.detectors.streaming)
    ("ObjectNode", "sklearn.linear_model._stochastic_gradient.SGDClassifier"),
    # source experts (featlab.detectors.experts): calibrated SVCs and a logistic gate
    ("ObjectNode", "featlab.detectors.experts.SourceExperts"),
    ("ObjectNode", "sklearn.linear_model._logistic.LogisticRegression"),
    ("LossNode", "sklearn.linear_model._sgd_fast.Hinge"),
})
#: The fully qualified types of :data:`ALLOWED_NODES`: the only names passed to skops as trusted.
TRUSTED_TYPES = frozenset(name for _, name in ALLOWED_NODES)


@dataclass
class SVMModel:
    """A loaded, verified SVM model folder."""

    folder: Path
    pipeline: Pipeline
    meta: dict

    @property
    def name(self) -> str:
        return self.folder.name


def augmented_embeddings(cache: EmbeddingCache, index, augment: str, seed: int = 0, device: str = "auto",
                         progress: bool = False, paths: bool = False) -> tuple:
    """Embeddings and labels of one augmented copy of every image of ``index`` (CNNDetection-style random JPEG
    and/or blur, drawn per image, seeded), extracted once into a cache whose key names the augmentation;
    with ``paths``, the images' paths too (the rows that could be read)."""
    from featlab.data.perturb import Perturbation
    from featlab.features.extract import embed

    perturbation = Perturbation(augment=augment, seed=seed)
    manifest = index.assign(label_name="", bytes=0)
    result = embed(manifest, cache.meta["config"], cache.meta.get("weights_info", {}), cache.folder.parent, device,
                   perturbation, progress=progress)
    ok = (result.manifest.status == "ok").to_numpy()
    out = result.cache.get(list(result.manifest.sha256[ok])), result.manifest.label.to_numpy(dtype=np.int64)[ok]
    return (*out, list(result.manifest.path[ok])) if paths else out


def features_for_fit(features_dir: str | os.PathLike, backbone: str | None = None, names: str | list[str] = "",
                     data_root: str | os.PathLike | None = None) -> EmbeddingCache:
    """The features a fit reads: the caches ``names`` names (folder names under ``features_dir``; several are
    concatenated, :func:`concat_caches`), else the one cache of ``backbone`` (:func:`~featlab.features.cache.select_cache`)."""
    from featlab.features.cache import select_cache

    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    if not names:
        return select_cache(features_dir, backbone)
    folders = [Path(features_dir) / name for name in names]
    missing = [f.name for f in folders if not (f / "meta.json").is_file()]
    if missing:
        raise FeatlabError(f"no feature cache named {', '.join(missing)} in {features_dir}")
    caches = [EmbeddingCache(f) for f in folders]
    return caches[0] if len(caches) == 1 else concat_caches(caches, features_dir, data_root=data_root)


def concat_caches(caches: list[EmbeddingCache], features_dir: str | os.PathLike, device: str = "auto",
                  progress: bool = False, data_root: str | os.PathLike | None = None) -> EmbeddingCache:
    """One cache whose embeddings concatenate those of ``caches`` (other backbones, layers or recipes) on
    ``data_root`` (default: the dataset the first one indexes last); images a part lacks are extracted
    for it first. Selection of such a combination belongs on the valid split, like any other recipe."""
    from featlab.features.extract import concat_results, embed

    if len(caches) < 2:
        raise FeatlabError("features: name at least two feature caches to concatenate")
    first = caches[0]
    index_name, root = first.dataset_index(data_root)
    manifest = first.index(index_name).assign(label_name="", bytes=0)
    parts = [embed(manifest, c.meta["config"], c.meta.get("weights_info", {}), features_dir, device, progress=progress)
             for c in caches]
    return concat_results(parts, features_dir, write_index=True, data_root=root).cache


def fit_from_cache(
    cache: EmbeddingCache,
    models_dir: str | os.PathLike,
    name: str | None = None,
    config: SVMFitConfig | None = None,
    n_jobs: int = -1,
    device: str = "auto",
    max_memory: int | None = None,
    stream: bool = False,
    data_root: str | os.PathLike | None = None,
    force: bool = False,
    **options,
) -> tuple[Path, FitResult]:
    """Fit on the cache's train split, select on valid, save a model folder.

    What to fit is ``config`` (:class:`~featlab.detectors.configs.SVMFitConfig`), or its fields given as
    keyword ``options`` (pca, kernel, C, gamma, class_weight, probability, solver, augment, experts, smooth_C,
    seed), validated there before any work. ``augment`` (``"jpeg"``, ``"blur"``, ``"jpeg,blur"``) adds one
    augmented copy of every training image (:func:`augmented_embeddings`); selection stays on the clean valid
    split. ``max_memory`` (bytes) caps the process: when the embeddings would not fit under it, or with ``stream``, the fit runs out
    of core (:mod:`featlab.detectors.streaming`). ``data_root`` picks the dataset when the cache holds several
    (default: the one extracted last). An existing folder ``name`` is refused before any work unless ``force``.
    The result's ``meta`` is the folder's ``meta.json``.
    """
    if config is not None and options:
        raise TypeError("give the fit's settings as config or as keyword options, not both")
    settings = config or SVMFitConfig(**options)
    seed, augment = settings.seed, settings.augment
    if name:
        refuse_existing_model(Path(models_dir) / name, force)
    index_name, root = cache.dataset_index(data_root)
    index = cache.index(index_name)
    others = [name for name in cache.datasets() if name != dataset_tag(root)] if root else []
    trained_on = [f"training on {root or 'the dataset extracted last'}"
                  + (f" (the dataset extracted last; this cache also holds {len(others)} other dataset(s): "
                     "pick one with --data)" if others and data_root is None else "")]
    splits = set(index.split)
    train_rows = index[(index.split == "train") & (index.status == "ok")].reset_index(drop=True)
    if train_rows.empty:
        raise FeatlabError(f"{cache.folder}: the train split holds no usable images")
    dim = int(cache.meta.get("embed_dim") or cache.get(list(train_rows.sha256[:1])).shape[1])
    if stream or (max_memory and resident_bytes() + len(train_rows) * dim * BYTES_PER_VALUE > max_memory):
        if augment:
            raise FeatlabError("--augment is not available with a streaming fit (--stream, or the embeddings "
                               "exceed --max-memory)")
        if settings.experts == "source":
            raise FeatlabError("--experts source is not available with a streaming fit (--stream, or the embeddings "
                               "exceed --max-memory)")
        valid_rows = index[(index.split == "valid") & (index.status == "ok")].reset_index(drop=True)
        result = _fit_streaming(cache, train_rows, valid_rows, dim, max_memory or 2 * 2**30, settings)
        result.notes.append("one SVM: a streaming fit has no source experts")
        n_clean, n_train_total, n_valid = len(train_rows), len(train_rows), len(valid_rows)
    else:
        X_train, y_train, train_index = cache.load_split("train", index_name)
        X_valid, y_valid = (cache.load_split("valid", index_name)[:2]) if "valid" in splits else (None, None)
        n_clean = len(X_train)
        paths = list(train_index.path)
        if augment:
            X_aug, y_aug, aug_paths = augmented_embeddings(cache, train_index, augment, seed=seed, device=device,
                                                           paths=True)
            X_train, y_train = np.concatenate([X_train, X_aug]), np.concatenate([y_train, y_aug])
            paths += aug_paths
        sources, experts_note = _expert_choice(settings.experts, paths, root, y_train, settings.smooth_C)
        result = fit_svm(X_train, y_train, X_valid, y_valid, seed=seed, n_jobs=n_jobs, sources=sources,
                         **settings.fit_options())
        result.notes.append(experts_note)
        n_train_total, n_valid = len(X_train), int(0 if X_valid is None else len(X_valid))
    result.notes[:0] = trained_on
    config = cache.meta["config"]
    name = name or f"svm-{config['backbone']}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(models_dir) / name
    meta = {
        "kind": "svm",
        "featlab": __version__,
        "created": utc_now(),
        "cache_key": cache.meta["key"],
        "cache_folder": str(cache.folder),
        "extraction": config,
        "backbone": config["backbone"],
        "weights_info": cache.meta.get("weights_info", {}),
        "data_root": root,
        "class_mapping": LABELS,
        "options": settings.recorded(),
        "best_params": result.best_params,
        "selection": result.selection,
        "selection_score_balanced_accuracy": result.selection_score,
        "search": result.search.to_dict(orient="records"),
        "pca": pca_summary(result.pipeline),
        "notes": result.notes,
        "n_train": int(n_clean),
        "n_train_augmented": int(n_train_total - n_clean),
        "n_valid": n_valid,
        "train_seconds": result.fit_seconds + result.search_seconds,
        "fit_seconds": result.fit_seconds,
        "search_seconds": result.search_seconds,
        "seed": seed,
        "versions": library_versions(),
    }
    save_new_model_folder(folder, ARTIFACT, lambda handle, sealed: handle.write(dumps_model(result.pipeline, sealed)), meta,
                          force=force)
    result.meta = meta
    return folder, result


def image_sources(paths: list[str], root: str | os.PathLike | None) -> list[str]:
    """Each image's recorded source (the ``source=<name>`` group of :mod:`featlab.data.groups`; ``""`` where none)."""
    from featlab.data.groups import find_groups, groups_for

    known = find_groups(root) if root else {}
    return [next((g.split("=", 1)[1] for g in names if g.startswith("source=")), "")
            for names in groups_for(paths, known)]


#: The source name ``fit-svm --experts auto`` gives a training set that records no sources.
UNRECORDED_SOURCE = "unrecorded"


def _expert_choice(experts: str, paths: list[str], root, labels: np.ndarray, smooth_C: float | None = None
                   ) -> tuple[np.ndarray | None, str]:
    """(the training rows' sources to fit experts on, or None for one SVM; the note that says which and why).
    The provenance is not read for ``none``. With a smooth SVM one source is enough (one expert blended with it;
    ``auto`` treats a training set that records none as one source); without, the gate needs two."""
    if experts == "none":
        return None, "one SVM (experts none)"
    sources = image_sources(paths, root)
    if experts == "auto" and smooth_C and not any(sources):
        # nothing recorded: the training set is one source (one expert + the smooth SVM, which transfers better
        # to data it never saw than one sharp SVM does)
        sources = [UNRECORDED_SOURCE] * len(paths)
    names, why_not = expert_sources(sources, labels, min_sources=1 if smooth_C else 2)
    why_not = why_not.replace(f"source {UNRECORDED_SOURCE} has", "the training set (no source recorded) has")
    if not names:
        if experts == "source":
            raise FeatlabError(f"--experts source: {why_not}")
        return None, f"one SVM: {why_not}"
    counts = ", ".join(f"{name} {sum(s == name for s in sources)}" for name in names)
    what = (f"one calibrated SVM expert per training source ({counts}), mixed by a gate" if len(names) > 1
            else f"one calibrated SVM expert for the one training source ({counts})")
    if smooth_C:
        what += f", blended half and half with a smooth SVM (C {smooth_C:g}) fitted on every training image"
    return np.asarray(sources, dtype=object), what


def _fit_streaming(cache: EmbeddingCache, train_rows, valid_rows, dim: int, max_memory: int, config: SVMFitConfig):
    """The out-of-core path of :func:`fit_from_cache` (:mod:`featlab.detectors.streaming`): rows read from the shards."""
    from featlab.detectors.streaming import fit_streaming

    train_hashes, valid_hashes = train_rows.sha256.to_numpy(), valid_rows.sha256.to_numpy()
    pca = config.pca
    if not isinstance(pca, int):
        raise FeatlabError("a streaming fit needs --pca as a number of components")

    def read(hashes):
        return lambda idx: cache.get(list(hashes[idx]), scattered=True)

    cache.refresh()  # read the shard keys now, so the footprint the fit measures includes them

    return fit_streaming(
        read(train_hashes), train_rows.label.to_numpy(), dim, read(valid_hashes) if len(valid_rows) else None,
        valid_rows.label.to_numpy() if len(valid_rows) else None, pca=pca, C=list(config.C),
        nystroem_components=config.nystroem_components, max_memory=max_memory, seed=config.seed)


def dumps_model(pipeline: Pipeline, sealed: str) -> bytes:
    """The skops bytes of a model file: the pipeline and the sealed copy of its metadata."""
    import skops.io

    return skops.io.dumps({"pipeline": pipeline, "featlab_meta": sealed})


def _skops_nodes(data: bytes) -> set[tuple[str, str]]:
    """Every (loader, ``module.Class``) pair named in a skops file's schema, read as JSON without importing
    or building anything; a node that names a type without its loader or module counts as ``?``."""
    import io
    import json
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = json.loads(archive.read("schema.json"))
    found: set[tuple[str, str]] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if "__class__" in node or "__loader__" in node or "__module__" in node:
                found.add((str(node.get("__loader__", "?")), f"{node.get('__module__', '?')}.{node.get('__class__', '?')}"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def _load_skops(artifact: Path, data: bytes | None = None) -> tuple[Pipeline, str | None]:
    """Load a featlab skops file after checking that it names only :data:`ALLOWED_NODES`.

    Two independent checks run before any object is built: our own walk of the schema (every node's loader
    and type must be in the exact allow-list) and skops's own audit (its untrusted types must be ours).
    """
    import zipfile

    import skops.io

    data = artifact.read_bytes() if data is None else data
    try:
        nodes = _skops_nodes(data)
    except (zipfile.BadZipFile, KeyError, ValueError, RecursionError) as error:
        raise FeatlabError(f"{artifact} is not a skops model file ({type(error).__name__}: {error})") from None
    foreign = sorted({name if loader in ("ObjectNode", "?") else f"{name} ({loader})"
                      for loader, name in nodes if (loader, name) not in ALLOWED_NODES})
    if foreign:
        raise FeatlabError(f"{artifact} holds types featlab never writes ({', '.join(foreign)}); refusing to load it")
    try:
        untrusted = set(skops.io.get_untrusted_types(data=data))
    except Exception as error:  # noqa: BLE001 - skops parses hostile input; any failure is a refusal
        raise FeatlabError(f"{artifact} is not a skops model file skops can audit ({type(error).__name__}: "
                           f"{error}); refusing to load it") from None
    if untrusted - TRUSTED_TYPES:
        raise FeatlabError(f"{artifact} holds types featlab never writes ({', '.join(sorted(untrusted - TRUSTED_TYPES))}); "
                           "refusing to load it")
    try:
        payload = skops.io.loads(data, trusted=sorted(TRUSTED_TYPES))
    except Exception as error:  # noqa: BLE001 - only allow-listed types get here; a malformed state is a refusal
        raise FeatlabError(f"{artifact} could not be loaded ({type(error).__name__}: {error}); refusing it") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("pipeline"), Pipeline):
        raise FeatlabError(f"{artifact} does not hold a featlab SVM pipeline")
    final = payload["pipeline"].steps[-1][1]
    if isinstance(final, SourceExperts):
        try:
            final.check_structure()
        except FeatlabError as error:
            raise FeatlabError(f"{artifact}: {error}; refusing it") from None
    return payload["pipeline"], payload.get("featlab_meta")


def load_svm(folder: str | os.PathLike, cache: EmbeddingCache | None = None, trust_pickle: bool = False,
             meta: dict | None = None) -> SVMModel:
    """Load a model folder after checking its hash, its sealed metadata, and (given ``cache``) that it fits
    those features.

    Parameters
    ----------
    folder : the model folder.
    cache : the features it will score; refused when made with another backbone, recipe, etc.
    trust_pickle : allow a featlab 0.1 folder (``model.joblib``, a pickle that runs code when loaded).
    meta : ``meta.json``, when the caller has read it already (it is not read again).
    """
    artifact, meta, data = verified_artifact(folder, meta)
    if meta.get("kind") not in ("svm", "oneclass"):
        raise FeatlabError(f"{folder} is a {meta.get('kind')} model, not an SVM or one-class detector")
    if meta["artifact"] == LEGACY_ARTIFACT:
        if not trust_pickle:
            raise FeatlabError(
                f"{artifact} is a pickle (featlab 0.1 model folder): loading it can run code. Refit it, or pass "
                "trust_pickle=True (CLI --trust-pickle) if you made this folder yourself"
            )
        log.warning("loading pickle %s because trust_pickle was given", artifact)
        import io

        pipeline = joblib.load(io.BytesIO(data))
        if not isinstance(pipeline, Pipeline):
            raise FeatlabError(f"{artifact} does not hold a scikit-learn Pipeline")
    else:
        pipeline, sealed = _load_skops(artifact, data)
        check_sealed(folder, meta, sealed)
    if cache is not None:
        check_features(meta, cache)
    return SVMModel(Path(folder), pipeline, meta)


def check_features(meta: dict, cache: EmbeddingCache) -> None:
    """Refuse features made with another backbone, weights, preprocessing or precision than the model's."""
    if cache.meta["key"] != meta["cache_key"]:
        ours, theirs = meta["extraction"], cache.meta["config"]
        different = [k for k in ours if ours.get(k) != theirs.get(k)] or ["extraction key"]
        raise FeatlabError(
            f"model {Path(meta.get('cache_folder', '')).name or meta['backbone']} was fitted on features of "
            f"{ours['backbone']}, but these features ({cache.folder.name}, {theirs['backbone']}) differ in: "
            f"{', '.join(different)}"
        )


def cache_for_model(meta: dict, features_dir: str | os.PathLike) -> EmbeddingCache:
    """The workspace cache whose key the model was fitted on."""
    for cache in find_caches(features_dir):
        if cache.meta["key"] == meta["cache_key"]:
            return cache
    raise FeatlabError(
        f"no features in {features_dir} match this model (backbone {meta['backbone']}, key {meta['cache_key'][:12]}); "
        "run featlab extract with the same backbone, weights and precision"
    )
