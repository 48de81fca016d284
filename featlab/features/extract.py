"""Batched embedding extraction into the on-disk cache.

Decoding and resizing run in DataLoader workers and yield uint8 tensors; normalisation,
dtype conversion and the forward pass run on the device in batches under
``torch.inference_mode`` with channels_last memory format. Only images whose content hash
is not yet cached are computed, and results are committed in shards as they come, so a
killed run loses at most one shard of work.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from featlab import __version__
from featlab.core.errors import FeatlabError
from featlab.core.versions import library_versions, utc_now
from featlab.data.dataset import scan_dataset
from featlab.data.faces import FaceStage, choose_faces
from featlab.data.perturb import Perturbation
from featlab.features.backbones import Backbone, load_backbone, resolve_auto
from featlab.features.cache import EmbeddingCache, dataset_tag
from featlab.features.recipe import FeatureRecipe, JointRecipe, LayerTap, default_recipe
from featlab.features.runtime import (  # noqa: F401 - re-exported for callers of featlab.features.extract
    PRECISIONS,
    ImageTensors,
    autocast_context,
    collate_images,
    cpu_supports_bf16,
    default_workers,
    resolve_device,
    resolve_precision,
)

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnxruntime")


# -------------------------------------------------------------------------- model


@dataclass
class Extractor:
    """A backbone ready to run: device, precision and engine resolved.

    Parameters
    ----------
    backbone : the loaded backbone.
    device : ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    precision : ``auto`` (bf16 on CPUs with native bf16, bf16/fp16 autocast on CUDA), ``fp32``, ``bf16``, ``fp16``.
    engine : ``torch`` or ``onnxruntime`` (CPU only, fp32: open_nsfw's shipped graph, or any other backbone's torch
        embedding exported to ONNX in memory); ``auto`` picks, on the CPU with precision auto/fp32, the engine
        ``make bench`` measured faster for the backbone (:attr:`BackboneSpec.cpu_engine`), torch otherwise.
    recipe : which stages, pooling, view and flip make the embedding (:mod:`featlab.features.recipe`); the
        dataclass default is the classic pooled embedding, while ``featlab extract`` and
        :class:`featlab.DeepFeatures` use :func:`featlab.features.recipe.default_recipe`.
    perturbation : applied to every image after decoding (robustness tests); part of the cache key.
    faces : detect and align the main face of every image first (:class:`featlab.data.faces.FaceStage`); part of
        the preprocessing, so of the cache key and of every model fitted on these features. An image without a face
        is quarantined ("no face").
    """

    backbone: Backbone
    device: str = "auto"
    precision: str = "auto"
    engine: str = "auto"
    recipe: FeatureRecipe = field(default_factory=FeatureRecipe)
    perturbation: Perturbation | None = None
    faces: FaceStage | None = None

    def __post_init__(self) -> None:
        self.recipe.validate(self.backbone.spec)
        self.preprocessing = self.backbone.preprocessing.with_view(self.recipe.view).with_faces(self.faces)
        self.torch_device = resolve_device(self.device)
        if self.engine not in ENGINES:
            raise FeatlabError(f"engine must be one of {', '.join(ENGINES)}")
        if self.engine == "auto":
            # the faster CPU engine, measured per backbone by make bench (BackboneSpec.cpu_engine); onnxruntime is fp32
            self.engine = "onnxruntime" if (self.backbone.spec.cpu_engine == "onnxruntime" and self._ort_available()
                                            and self.torch_device.type == "cpu"
                                            and self.precision in ("auto", "fp32")) else "torch"
        if self.engine == "onnxruntime":
            if self.torch_device.type != "cpu":
                raise FeatlabError("engine onnxruntime runs on the CPU only")
            self.precision = "fp32"
        else:
            self.precision = resolve_precision(self.precision, self.torch_device)
        self.model = self._build(self.recipe)

    def _build(self, recipe: FeatureRecipe | JointRecipe) -> torch.nn.Module:
        """The module computing ``recipe``'s embedding on this extractor's engine and device."""
        if self.engine == "onnxruntime":
            if self.backbone.name == "resnet50-opennsfw" and self.backbone.weights["pretrained"]:
                from featlab.features.opennsfw import OnnxRuntimeEmbedding  # its own shipped graph

                return OnnxRuntimeEmbedding(threads=torch.get_num_threads(), recipe=recipe)
            from featlab.features.onnx_engine import ExportedOnnxEmbedding

            return ExportedOnnxEmbedding(self._torch_embedding(recipe), threads=torch.get_num_threads())
        return self._torch_embedding(recipe).to(self.torch_device, memory_format=torch.channels_last)

    def _torch_embedding(self, recipe: FeatureRecipe | JointRecipe) -> torch.nn.Module:
        model = self.backbone.model.eval()
        classic = isinstance(recipe, FeatureRecipe) and recipe.is_classic
        return model if classic else LayerTap(model, self.backbone.spec, recipe)

    def pass_key(self) -> tuple:
        """What must be equal for extractors to share one pass over the images (all but the recipe's stages,
        pooling and flip): the same loaded backbone, device, precision, engine, preprocessing and perturbation."""
        perturbation = self.perturbation.as_dict() if self.perturbation else None
        return (id(self.backbone), str(self.torch_device), self.precision, self.engine,
                repr(sorted(self.preprocessing.as_dict().items())), repr(perturbation))

    def _ort_available(self) -> bool:
        if self.backbone.name == "resnet50-opennsfw" and not self.backbone.weights["pretrained"]:
            return False  # random open_nsfw weights live in torch only; the shipped graph holds the real ones
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    @property
    def dim(self) -> int:
        return self.recipe.dim(self.backbone.spec)

    @property
    def config(self) -> dict:
        """What determines the numbers: the cache key's content."""
        return {
            "backbone": self.backbone.name,
            "weights": self.backbone.weights["fingerprint"],
            "preprocessing": self.preprocessing.as_dict(),
            "recipe": self.recipe.as_dict(),
            "precision": self.precision,
            "engine": self.engine,
            # only when set, so the clean cache keeps its key
            **({"perturbation": self.perturbation.as_dict()} if self.perturbation and not self.perturbation.is_identity
               else {}),
        }

    def perturbed(self, perturbation: Perturbation | None) -> Extractor:
        """This extractor (same model, nothing rebuilt) applying ``perturbation`` to every decoded image."""
        import copy

        twin = copy.copy(self)
        twin.perturbation = None if perturbation is None or perturbation.is_identity else perturbation
        return twin

    def __call__(self, batch_uint8: torch.Tensor) -> np.ndarray:
        """uint8 (N, 3, H, W) -> float32 embeddings (N, dim)."""
        batch = batch_uint8.to(self.torch_device, non_blocking=True)
        batch = self.preprocessing.normalize(batch).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast_context(self.precision, self.torch_device):
            out = self.model(batch).float()
            if self.recipe.flip:
                out = (out + self.model(batch.flip(3)).float()) / 2
        return out.cpu().numpy()

    def embed_all(self, batch_uint8: torch.Tensor) -> list[np.ndarray]:
        """The embeddings of a batch, one array per cache this extractor fills (one): see :class:`JointExtractor`."""
        return [self(batch_uint8)]


class JointExtractor:
    """Extractors of one backbone that differ only in their recipe (stages, pooling, flip), run as one.

    Every image is decoded once and goes through the network once (twice when a recipe averages the mirror image);
    each member's embedding is cut out of the union of the pooled stages (:class:`JointRecipe`), the same numbers
    as when the member runs alone, so each member keeps its own cache and key.

    Parameters
    ----------
    members : extractors whose :meth:`Extractor.pass_key` is equal (e.g. built on one loaded backbone).
    """

    def __init__(self, members: list[Extractor]) -> None:
        if not members:
            raise FeatlabError("a joint extraction needs at least one extractor")
        first = members[0]
        if any(m.pass_key() != first.pass_key() for m in members[1:]):
            raise FeatlabError("extractors computed together must share backbone, device, precision, engine, view, "
                               "face stage and perturbation")
        spec = first.backbone.spec
        self.members = members
        self.recipe = JointRecipe(tuple(m.recipe for m in members)).validate(spec)
        self.columns = [torch.tensor(self.recipe.columns(m.recipe, spec)) for m in members]
        self.flips = [m.recipe.flip for m in members]
        self.backbone, self.torch_device, self.precision = first.backbone, first.torch_device, first.precision
        self.preprocessing, self.perturbation = first.preprocessing, first.perturbation
        self.model = first._build(self.recipe)

    def embed_all(self, batch_uint8: torch.Tensor) -> list[np.ndarray]:
        """uint8 (N, 3, H, W) -> one float32 (N, dim) array per member, in order."""
        batch = batch_uint8.to(self.torch_device, non_blocking=True)
        batch = self.preprocessing.normalize(batch).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast_context(self.precision, self.torch_device):
            out = self.model(batch).float()
            mirrored = self.model(batch.flip(3)).float() if any(self.flips) else None
        return [((out[:, cols] + mirrored[:, cols]) / 2 if flip else out[:, cols]).cpu().numpy()
                for cols, flip in zip(self.columns, self.flips)]


# ---------------------------------------------------------------------- extraction


@dataclass
class ExtractionResult:
    cache: EmbeddingCache
    manifest: pd.DataFrame  # with status/reason updated by decoding
    computed: int  # embeddings computed and stored by this run
    failed: int  # images this run tried and could not decode (quarantined, remembered)
    seconds: float
    device: str
    precision: str
    faces: dict = field(default_factory=dict)  # how the face stage was chosen (featlab.data.faces.choose_faces)

    @property
    def images_per_second(self) -> float:
        return (self.computed + self.failed) / self.seconds if self.seconds > 0 else float("nan")

    @property
    def quarantined(self) -> pd.DataFrame:
        return self.manifest[self.manifest.status != "ok"]


def extract_manifest(
    manifest: pd.DataFrame,
    extractor: Extractor,
    features_dir: str | os.PathLike,
    batch_size: int = 32,
    num_workers: int | None = None,
    shard_size: int = 512,
    progress: bool = True,
    data_root: str = "",
    write_index: bool = True,
    ray: str | None = None,
) -> ExtractionResult:
    """Embed every usable image of ``manifest`` that the cache does not hold yet.

    Parameters
    ----------
    manifest : from :func:`featlab.data.dataset.scan_dataset` or :func:`featlab.data.dataset.scan_images`.
    extractor : the prepared model.
    features_dir : the workspace's ``features/`` folder.
    batch_size : images per forward pass.
    num_workers : DataLoader decoding processes (default: see :func:`default_workers`).
    shard_size : images per committed shard (what a killed run can lose at most).
    progress : show a tqdm bar with images/s.
    data_root : recorded in the cache's meta.json.
    write_index : make this manifest the cache's dataset (``index.csv``); off for prediction.
    ray : run decoding and the model on Ray Data (:mod:`featlab.features.distributed`): ``"local"`` starts a local
        cluster, ``"auto"`` joins the running one, anything else is a cluster address. Results are
        committed into the same cache, shard by shard.

    Returns
    -------
    ExtractionResult; the cache's ``index.csv`` is rewritten for this manifest.
    """
    if batch_size < 1:
        raise FeatlabError("batch_size must be at least 1")
    return _extract(manifest, extractor, [_open_cache(extractor, features_dir)], batch_size, num_workers, shard_size,
                    progress, data_root, write_index, ray)[0]


def extract_together(
    manifest: pd.DataFrame,
    extractors: list[Extractor],
    features_dir: str | os.PathLike,
    batch_size: int = 32,
    num_workers: int | None = None,
    shard_size: int = 512,
    progress: bool = True,
    data_root: str = "",
    write_index: bool = True,
) -> list[ExtractionResult]:
    """:func:`extract_manifest` for several extractors, sharing the work: those with the same
    :meth:`Extractor.pass_key` (one backbone, one view: recipes that differ in stages, pooling or flip) run as one
    :class:`JointExtractor`, so each image is decoded and sent through the network once for all of them. Each
    extractor fills its own cache, with the numbers it computes alone. Returns one result per extractor, in order;
    the ``seconds`` of extractors that ran together are their shared pass's."""
    if batch_size < 1:
        raise FeatlabError("batch_size must be at least 1")
    groups: dict[tuple, list[int]] = {}
    for position, extractor in enumerate(extractors):
        groups.setdefault(extractor.pass_key(), []).append(position)
    results: list[ExtractionResult | None] = [None] * len(extractors)
    for positions in groups.values():
        members = [extractors[i] for i in positions]
        joint = members[0] if len(members) == 1 else JointExtractor(members)
        caches = [_open_cache(m, features_dir) for m in members]
        for position, result in zip(positions, _extract(manifest, joint, caches, batch_size, num_workers, shard_size,
                                                        progress, data_root, write_index)):
            results[position] = result
    return results


def _open_cache(extractor: Extractor, features_dir) -> EmbeddingCache:
    return EmbeddingCache.create(
        features_dir,
        extractor.backbone.name,
        extractor.config,
        extra_meta={
            "embed_dim": extractor.dim,
            "backbone_parameters": sum(p.numel() for p in extractor.backbone.model.parameters()),
            "backbone_bytes": _file_size(extractor.backbone.weights.get("file")),
            "weights_info": extractor.backbone.weights,
            "versions": library_versions(),
            "created": utc_now(),
            "featlab": __version__,
        },
    )


def _extract(manifest, extractor, caches, batch_size, num_workers, shard_size, progress, data_root, write_index,
             ray=None) -> list[ExtractionResult]:
    """Fill ``caches`` (one per output of ``extractor.embed_all``) for the images of ``manifest`` that any of them
    lacks; an image is computed once for all of them and stored where it is missing."""
    manifest = manifest.copy()
    known_bad: dict[str, str] = {}
    for cache in caches:
        with cache.writer_lock():
            cache.clean_orphans()  # safe under the lock: writers hold it while they write a shard
        cache.refresh()  # another process may have added shards since this cache was opened
        known_bad.update(cache.failures())
    todo = manifest[(manifest.status == "ok") & ~manifest.sha256.isin(known_bad)]
    todo = todo[np.array([any(h not in cache for cache in caches) for h in todo.sha256], dtype=bool)]
    todo = todo.drop_duplicates("sha256")
    paths, hashes = list(todo.path), list(todo.sha256)
    missing = [sum(h not in cache for h in hashes) for cache in caches]

    started = time.perf_counter()
    failed_now = 0
    if paths and ray is not None:
        from featlab.features.distributed import compute_with_ray

        if len(caches) != 1:
            raise FeatlabError("extractors run together are computed locally, not on Ray Data")
        failed_now = compute_with_ray(paths, hashes, extractor, caches[0], shard_size, ray, batch_size, progress,
                                      build=extractor_from_config)
    elif paths:
        workers = default_workers(extractor.torch_device) if num_workers is None else num_workers
        loader = DataLoader(
            ImageTensors(paths, extractor.preprocessing, extractor.perturbation),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate_images,
            pin_memory=extractor.torch_device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )
        bar = _progress(len(paths), extractor.backbone.name, progress)
        pending_hashes: list[str] = []
        pending: list[list[np.ndarray]] = []  # per batch, one array per cache
        failures: list[dict] = []

        def commit() -> None:
            for position, cache in enumerate(caches):  # cache.add stores only what the cache lacks
                cache.add(pending_hashes, np.concatenate([outputs[position] for outputs in pending]))
                cache.record_failures(failures)

        for indices, batch, reasons in loader:
            good = [k for k, r in enumerate(reasons) if not r]
            for k, reason in enumerate(reasons):
                if reason:
                    i = int(indices[k])
                    failures.append({"sha256": hashes[i], "path": paths[i], "reason": reason})
                    failed_now += 1
            if good:
                pending.append(extractor.embed_all(batch[good]))
                pending_hashes.extend(hashes[int(indices[k])] for k in good)
            if len(pending_hashes) >= shard_size:
                commit()
                pending_hashes, pending, failures = [], [], []
            bar.update(len(reasons))
        if pending_hashes:
            commit()
        else:
            for cache in caches:
                cache.record_failures(failures)
        bar.close()
    seconds = time.perf_counter() - started

    results = []
    for cache, lacking in zip(caches, missing):
        bad = cache.failures()
        done = manifest.copy()
        failed = done.sha256.isin(bad) & (done.status == "ok")
        done.loc[failed, "status"] = "quarantined"
        done.loc[failed, "reason"] = done.loc[failed, "sha256"].map(bad)
        if paths:
            # a shared pass records its own rate, and with which caches it was shared
            cache.update_meta(extract_images_per_s=len(paths) / seconds, extract_device=str(extractor.torch_device),
                              extract_shared_with=[c.folder.name for c in caches if c is not cache])
        if write_index:
            cache.write_index(done)  # the latest dataset (what fit-svm trains on next)
            if data_root:  # and this dataset's own index, which later extractions of other data never replace
                cache.write_index(done, name=dataset_tag(data_root))
            cache.update_meta(data_root=data_root, last_run=utc_now())
        results.append(ExtractionResult(
            cache=cache,
            manifest=done,
            computed=max(0, lacking - failed_now),
            failed=failed_now,
            seconds=seconds,
            device=str(extractor.torch_device),
            precision=extractor.precision,
        ))
    return results


def weights_argument(weights_info: dict) -> str:
    """The ``weights`` value that reproduces a recorded weights source."""
    from featlab.features.specs import RANDOM_WEIGHTS

    source = weights_info.get("source", "")
    if source == RANDOM_WEIGHTS:
        return "none"
    if source.startswith("file:"):
        return source.removeprefix("file:")
    return "default"


def extractor_from_config(config: dict, weights_info: dict, device: str = "auto",
                          perturbation: Perturbation | None = None) -> Extractor:
    """Rebuild the extractor a cache (or a model fitted on it) was made with, optionally perturbing images."""
    backbone = load_backbone(config["backbone"], weights_argument(weights_info))
    return Extractor(backbone, device=device, precision=config["precision"], engine=config["engine"],
                     recipe=FeatureRecipe.from_dict(config.get("recipe")), perturbation=perturbation,
                     faces=FaceStage.from_dict(config["preprocessing"].get("faces")))


def embed(
    manifest: pd.DataFrame, config: dict, weights_info: dict, features_dir: str | os.PathLike, device: str = "auto",
    perturbation: Perturbation | None = None, batch_size: int = 32, progress: bool = False,
    write_index: bool = False, data_root: str = "", ray: str | None = None,
    extractors: list[Extractor] | None = None,
) -> ExtractionResult:
    """Embeddings of a manifest for a recorded feature config: one extractor, or the concatenation of
    several caches' features (``featlab fit-svm --features A,B``; see :func:`concat_results`).
    ``ray``: extract on Ray Data (see :func:`extract_manifest`). ``extractors``: the config's extractors
    (one per part) already built, e.g. by a loaded detector, so no backbone is rebuilt per call."""
    if "concat" not in config:
        extractor = (extractors[0].perturbed(perturbation) if extractors
                     else extractor_from_config(config, weights_info, device, perturbation))
        return extract_manifest(manifest, extractor, features_dir, batch_size=batch_size, progress=progress,
                                write_index=write_index, data_root=data_root, ray=ray)
    parts = [embed(manifest, part["config"], part["weights_info"], features_dir, device, perturbation, batch_size,
                   progress, ray=ray, extractors=[extractors[i]] if extractors else None)
             for i, part in enumerate(weights_info["parts"])]
    return concat_results(parts, features_dir, write_index=write_index, data_root=data_root)


def concat_results(parts: list[ExtractionResult], features_dir: str | os.PathLike, write_index: bool = False,
                   data_root: str = "") -> ExtractionResult:
    """One cache holding, per image, the concatenation of the parts' embeddings (in order).

    Its config names every part's config, so it has its own key; an image is usable only when
    every part could embed it.
    """
    metas = [p.cache.meta for p in parts]
    config = {"backbone": "+".join(m["config"]["backbone"] for m in metas), "concat": [m["config"] for m in metas]}
    weights_info = {
        "source": " + ".join(m["weights_info"]["source"] for m in metas),
        "fingerprint": "+".join(str(m["weights_info"].get("fingerprint")) for m in metas),
        "pretrained": all(m["weights_info"].get("pretrained") for m in metas),
        "file": None,
        "parts": [{"config": m["config"], "weights_info": m["weights_info"], "cache": p.cache.folder.name}
                  for m, p in zip(metas, parts)],
    }
    cache = EmbeddingCache.create(features_dir, "concat", config, extra_meta={
        "embed_dim": sum(int(m["embed_dim"]) for m in metas), "weights_info": weights_info,
        "backbone_parameters": sum(int(m.get("backbone_parameters") or 0) for m in metas),
        "backbone_bytes": sum(int(m.get("backbone_bytes") or 0) for m in metas),
        "versions": library_versions(), "created": utc_now(), "featlab": __version__,
    })
    manifest = parts[0].manifest.copy()
    for other in parts[1:]:
        bad = other.manifest.set_index("path").status.reindex(manifest.path).to_numpy() != "ok"
        manifest.loc[bad & (manifest.status == "ok").to_numpy(), ["status", "reason"]] = ["quarantined",
                                                                                         "not embedded by every part"]
    with cache.writer_lock():
        cache.refresh()
        usable = list(dict.fromkeys(manifest.sha256[manifest.status == "ok"]))
        todo = [h for h in usable if h not in cache]
        if todo:
            cache.add(todo, np.hstack([p.cache.get(todo) for p in parts]))
    if write_index:
        cache.write_index(manifest)
        if data_root:
            cache.write_index(manifest, name=dataset_tag(data_root))
        cache.update_meta(data_root=data_root, last_run=utc_now())
    return ExtractionResult(cache=cache, manifest=manifest, computed=sum(p.computed for p in parts),
                            failed=sum(p.failed for p in parts), seconds=sum(p.seconds for p in parts),
                            device=parts[0].device, precision="+".join(p.precision for p in parts))


def _file_size(path: str | None) -> int | None:
    return os.path.getsize(path) if path and os.path.isfile(path) else None


def _progress(total: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"extract {name}", unit="img", disable=not enabled, leave=False, smoothing=0.1)


def extract_dataset(
    root: str | os.PathLike,
    features_dir: str | os.PathLike,
    backbone: str = "auto",
    weights: str = "default",
    device: str = "auto",
    precision: str = "auto",
    engine: str = "auto",
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = True,
    recipe: FeatureRecipe | None = None,
    shard_size: int = 512,
    hash_memo: str | os.PathLike | None = None,
    ray: str | None = None,
    faces: str = "none",
    face_size: int | None = None,
    face_margin: float = 0.2,
) -> ExtractionResult:
    """Scan ``root`` (see :mod:`featlab.data.dataset`) and extract every split into the cache.

    ``recipe`` defaults to :func:`featlab.features.recipe.default_recipe` for the backbone. ``hash_memo`` (an
    SQLite file, :class:`featlab.data.hashmemo.HashMemo`) skips hashing files whose stat is unchanged.
    ``faces``: ``none`` (whole images), ``detect`` (the aligned main face of each image, ``face_size`` px - default
    the backbone's resize size - with ``face_margin``), or ``auto`` (detect unless a sample of the dataset is
    already face-aligned, :func:`featlab.data.faces.is_face_aligned`; the decision is in the result's ``faces``).
    """
    from featlab.data.hashmemo import HashMemo

    name, reason = resolve_auto(backbone)
    if reason:
        log.warning("backbone auto: %s", reason)
    manifest = scan_dataset(root, check_images=False, memo=HashMemo(hash_memo) if hash_memo else None)
    loaded = load_backbone(name, weights)
    recipe = recipe or default_recipe(loaded.spec)
    stage, decision = choose_faces(faces, manifest, face_size or loaded.preprocessing.resize, face_margin)
    extractor = Extractor(loaded, device=device, precision=precision, engine=engine, recipe=recipe, faces=stage)
    result = extract_manifest(
        manifest,
        extractor,
        features_dir,
        batch_size=batch_size,
        num_workers=num_workers,
        shard_size=shard_size,
        progress=progress,
        data_root=str(os.path.abspath(root)),
        ray=ray,
    )
    result.faces = decision
    if faces == "auto":
        result.cache.update_meta(faces_auto=decision)
    return result
