"""Extraction and scoring on Ray Data: decoding in CPU tasks, the model in an actor pool.

``featlab extract --ray [ADDRESS]`` (and :func:`featlab.features.extract.extract_manifest` with ``ray=``): the
driver works out which images the cache lacks *before* scheduling anything, Ray Data reads those
paths, decodes and preprocesses them in CPU tasks, runs the extractor in an actor pool (one actor
per GPU, or sized to the CPUs), and streams the embeddings back to the driver, which commits them
shard by shard into the content-addressed cache. A killed job therefore resumes where it stopped,
and the embeddings equal a local run's (same extractor, same preprocessing).

``featlab predict`` / ``evaluate --ray``: an SVM's missing embeddings are extracted as above; a CNN
or autoencoder folder is scored by :func:`score_with_ray` (each actor loads the folder itself, so
only its path travels).

Ray is an optional extra: ``pip install 'featlab[ray]'``.

Cluster recipe: ``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others,
then ``featlab extract --ray auto`` on the head. Every node must read the image paths the manifest
names (shared storage such as NFS, or the same copy at the same path on each node); the cache lives
only on the driver's disk, as the driver alone writes it.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import numpy as np

from featlab.core.errors import FeatlabError

log = logging.getLogger(__name__)

INSTALL_HINT = "--ray needs Ray Data: pip install 'featlab[ray]' (or pip install 'ray[data]')"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise FeatlabError(INSTALL_HINT) from None
    return ray


def _decode(batch: dict, preprocessing, perturbation) -> dict:
    """Ray task body: paths -> uint8 arrays in the model's view, or a reason (as a local run decodes them)."""
    from featlab.features.runtime import ImageTensors

    images = ImageTensors([str(p) for p in batch["path"]], preprocessing, perturbation)
    decoded = [images[k] for k in range(len(images))]
    return {"i": batch["i"], "image": np.stack([t.numpy() for _, t, _ in decoded]),
            "reason": np.asarray([why for _, _, why in decoded], dtype=object)}


class _Score:
    """Ray actor: a pixel model (CNN or autoencoder folder) loaded once per actor by ``load``."""

    def __init__(self, load, folder: str, device: str, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)
        self.model, self.prep, _, self.device = load(folder, device)

    def __call__(self, batch: dict) -> dict:
        import torch

        good = np.flatnonzero(batch["reason"] == "")
        out = np.full(len(batch["i"]), np.nan)
        if len(good):
            pixels = torch.from_numpy(np.ascontiguousarray(batch["image"][good])).to(self.device)
            with torch.inference_mode():
                x = self.prep.normalize(pixels).contiguous(memory_format=torch.channels_last)
                out[good] = self.model(x).float().view(-1).cpu().numpy()
        return {"i": batch["i"], "score": out, "reason": batch["reason"]}


class _Embed:
    """Ray actor: the extractor, built once per actor from the driver's recorded configuration."""

    def __init__(self, build, config: dict, weights_info: dict, device: str, perturbation, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)
        # ``build`` is featlab.features.extract.extractor_from_config, passed in so that this module (which
        # extraction imports) does not import extraction back
        self.extractor = build(config, weights_info, device, perturbation)

    def __call__(self, batch: dict) -> dict:
        import torch

        good = np.flatnonzero(batch["reason"] == "")
        dim = self.extractor.dim
        out = np.zeros((len(batch["i"]), dim), dtype=np.float32)
        if len(good):
            out[good] = self.extractor(torch.from_numpy(np.ascontiguousarray(batch["image"][good])))
        return {"i": batch["i"], "embedding": out, "reason": batch["reason"]}


def running_cluster_address() -> str | None:
    """The address ``auto`` means: ``$RAY_ADDRESS``, else the one ``ray start`` recorded on this machine."""
    import tempfile

    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    recorded = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        return recorded.read_text().strip() or None
    except OSError:
        return None


def _connect(address: str):
    """Ray, connected: ``local`` starts a local cluster, ``auto`` joins the running one, else an address.

    A cluster bound to a loopback address is joined from that address too (Ray would otherwise register
    the driver under the machine's interface address, which such a head node cannot reach).
    """
    ray = _ray()
    if ray.is_initialized():
        return ray
    target = None if address == "local" else (running_cluster_address() if address == "auto" else address)
    if address == "auto" and target is None:
        raise FeatlabError("--ray auto: no running Ray cluster found on this machine ($RAY_ADDRESS is unset and "
                           "'ray start' recorded none); start one with 'ray start --head', or use --ray local "
                           "or --ray HOST:PORT")
    advice = ("start one with 'ray start --head --node-ip-address 127.0.0.1 --port 6379' and pass --ray "
              "127.0.0.1:6379, or use --ray local")
    loopback = False
    if target is not None:
        host, _, port = target.removeprefix("ray://").rpartition(":")
        host = host.strip("[]")
        loopback = host in ("127.0.0.1", "localhost", "::1")
        try:  # a dead address fails here in seconds; Ray itself would retry for minutes
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as error:
            raise FeatlabError(f"--ray {address}: cannot reach a Ray cluster at {target} "
                               f"({getattr(error, 'strerror', None) or error}); {advice}") from None
    import ray._private.ray_constants as ray_constants

    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    if loopback:
        # Ray swaps a loopback address for this machine's interface address before connecting, and a head node
        # bound to 127.0.0.1 is not there; its single-machine mode keeps the loopback address as given.
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address=target, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as error:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, TimeoutError, ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise FeatlabError(f"--ray {address}: cannot join the Ray cluster at {target or 'a new local cluster'} "
                           f"({type(error).__name__}: {first}); {advice}") from None
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
    return ray


def _actor_plan(ray, want_cuda: bool) -> tuple[str, int, int]:
    """(device, actors, torch threads per actor): one actor per GPU, or one per 2 CPU cores."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    device = "cuda" if gpus and want_cuda else "cpu"
    actors = gpus if device == "cuda" else max(1, cpus // 2)
    # CPU actors run torch on their cores, less the decoding tasks' share
    threads = max(1, (cpus - 1) // actors) if device == "cpu" else 1
    return device, actors, threads


def _pipeline(ray, paths: list[str], preprocessing, perturbation, actor, actor_args: tuple, device: str,
              actors: int, threads: int, batch_size: int):
    """paths -> decoded in light tasks (a quarter CPU each, so they never starve the actors) -> ``actor``."""
    dataset = ray.data.from_items([{"i": i, "path": p} for i, p in enumerate(paths)])
    dataset = dataset.map_batches(_decode, fn_kwargs={"preprocessing": preprocessing, "perturbation": perturbation},
                                  batch_size=batch_size, num_cpus=0.25)
    return dataset.map_batches(actor, fn_constructor_args=actor_args, batch_size=batch_size,
                               compute=ray.data.ActorPoolStrategy(size=actors),
                               num_gpus=1 if device == "cuda" else 0, num_cpus=0 if device == "cuda" else threads)


def compute_with_ray(paths: list[str], hashes: list[str], extractor, cache, shard_size: int, address: str,
                     batch_size: int = 32, progress: bool = False, build=None) -> int:
    """Embed ``paths`` on Ray Data and commit them into ``cache``; returns how many could not be decoded.
    ``build(config, weights_info, device, perturbation)`` rebuilds ``extractor`` in each actor."""
    ray = _connect(address)
    device, actors, threads = _actor_plan(ray, extractor.torch_device.type == "cuda")
    dataset = _pipeline(ray, paths, extractor.preprocessing, extractor.perturbation, _Embed,
                        (build, extractor.config, extractor.backbone.weights, device, extractor.perturbation, threads),
                        device, actors, threads, batch_size)
    failed = 0
    log.info("ray: %d images, %d actor(s) on %s", len(paths), actors, device)
    for batch in dataset.iter_batches(batch_size=shard_size, batch_format="numpy"):
        index = batch["i"].astype(int)
        reasons = batch["reason"]
        good = reasons == ""
        if good.any():
            cache.add([hashes[i] for i in index[good]], batch["embedding"][good])
        cache.record_failures([{"sha256": hashes[i], "path": paths[i], "reason": str(r)}
                               for i, r in zip(index[~good], reasons[~good])])
        failed += int((~good).sum())
        if progress:
            print(f"ray: committed {int(good.sum())} embeddings", flush=True)
    return failed


def score_with_ray(paths: list[str], load, folder: str, preprocessing, address: str, batch_size: int = 32,
                   want_cuda: bool = False) -> tuple[np.ndarray, list[str]]:
    """Scores of ``paths`` by the pixel model in ``folder`` on Ray Data, in fp32 as a local run scores.

    ``load(folder, device) -> (network, preprocessing, meta, device)`` runs in each actor
    (:func:`featlab.detectors.pixel.load_pixel_model`). Returns (score per path, NaN where undecodable;
    reason per path, "" when decoded), as :func:`featlab.detectors.cnn.score_images` does.
    """
    ray = _connect(address)
    device, actors, threads = _actor_plan(ray, want_cuda)
    dataset = _pipeline(ray, paths, preprocessing, None, _Score, (load, str(folder), device, threads), device,
                        actors, threads, batch_size)
    scores, reasons = np.full(len(paths), np.nan), [""] * len(paths)
    for batch in dataset.iter_batches(batch_size=max(batch_size, 256), batch_format="numpy"):
        for i, score, reason in zip(batch["i"].astype(int), batch["score"], batch["reason"]):
            scores[i], reasons[i] = score, str(reason)
    return scores, reasons
