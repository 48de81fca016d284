"""``featlab serve``: detectors loaded once, kept warm, scored over HTTP (FastAPI + uvicorn).

* ``POST /v1/score`` - one or more images (multipart field ``file``, repeatable; optional field ``model``): JSON per
  file with score, score_kind, threshold, verdict, model name and fingerprint, timings; a file that cannot be
  scored gets its reason (the request answers 422 when no file could be scored). Field ``faces`` (model, detect,
  none): with a face stage - the model's own, or ``detect`` - every face is found, aligned and scored (``faces``:
  box, detection score, score, verdict each) and the file's score is its most-fake face; no face: status ``no face``.
  A video file among them (by its extension) is scored as ``/v1/video`` does at 1 frame/s (``video``: its tracks).
* ``POST /v1/video`` - one video (``fps``, ``max_frames`` up to ``max_video_frames``, ``top_k``): the video's score,
  its face tracks and every sampled frame's faces, as ``featlab video`` computes them; an unreadable video: 422.
* ``POST /v1/explain`` - one image: the heatmap over it as a PNG (``method``: auto, occlusion, gradcam, gradient),
  score and verdict in ``X-Featlab-*`` headers.
* ``GET /v1/models`` - what is loaded: kind, data, weights, threshold. ``GET /healthz``. ``GET /metrics`` -
  Prometheus text (requests by status, images scored, latency histogram). ``GET /`` - a page to drop images on
  (no external assets).

Concurrent requests are **micro-batched**: decoded images wait at most ``max_wait_ms`` for others, then up to
``max_batch`` go through the model in one forward pass (:class:`Batcher`). Every limit has a safe default:
upload bytes, pixels per image (decompression bombs), files per request, request timeout, requests in flight
(past it: 503 with ``Retry-After``). Bad input is answered with a 4xx JSON error in one sentence; nothing from a
traceback reaches the client (it is logged here). ``api_key`` (or ``$FEATLAB_API_KEY``) requires the header
``X-API-Key`` or ``Authorization: Bearer``, compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, Request  # at module level: the endpoints' annotations are resolved from here
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from featlab import CLASS_NAMES, __version__
from featlab.core.errors import BadImageError, FeatlabError
from featlab.data.dataset import load_rgb
from featlab.data.faces import FaceStage
from featlab.data.video import is_video
from featlab.detectors.base import Detector
from featlab.evaluation.faces import scoring_stage

log = logging.getLogger("featlab.service")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class ServiceSettings:
    """Limits and batching of ``featlab serve`` (all validated here)."""

    max_batch: int = 32
    max_wait_ms: float = 10.0
    max_upload_bytes: int = 20 * 2**20  # per request
    max_pixels: int = 40_000_000  # per image: far above any photo, far below a decompression bomb
    max_files: int = 16
    timeout_s: float = 60.0
    max_inflight: int = 64
    api_key: str | None = None
    max_video_frames: int = 64  # per video request (POST /v1/video)

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_upload_bytes", "max_pixels", "max_files", "max_inflight", "max_video_frames"):
            if int(getattr(self, name)) < 1:
                raise FeatlabError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.max_wait_ms >= 0 or not self.timeout_s > 0:
            raise FeatlabError("max_wait_ms must be >= 0 and timeout_s > 0")

    def public(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "api_key"} | {"auth": self.api_key is not None}


class Batcher:
    """Collects decoded images of concurrent requests and scores them in batches, one model forward at a time."""

    def __init__(self, detector: Detector, max_batch: int, max_wait_ms: float, executor: ThreadPoolExecutor) -> None:
        self.detector, self.max_batch, self.max_wait = detector, max_batch, max_wait_ms / 1000
        self.executor = executor
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = Counter()  # batch size -> count (for /metrics)

    async def score(self, pixels: torch.Tensor) -> float:
        if self.task is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((pixels, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = torch.stack([pixels for pixels, _ in items])
            try:
                scores = await loop.run_in_executor(self.executor, self.detector.score, batch)
            except Exception as error:  # noqa: BLE001 - one failed batch must not stop the service
                log.exception("scoring a batch of %d failed", len(items))
                for _, future in items:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches[len(items)] += 1
            for (_, future), value in zip(items, scores):
                if not future.done():
                    future.set_result(float(value))


class Metrics:
    """Prometheus text counters, kept in memory."""

    def __init__(self) -> None:
        self.requests = Counter()  # (path, status) -> n
        self.images = Counter()  # model -> n
        self.latency = Counter()  # bucket -> n
        self.latency_sum, self.latency_count = 0.0, 0

    def observe(self, path: str, status: int, seconds: float) -> None:
        self.requests[(path, status)] += 1
        self.latency_sum += seconds
        self.latency_count += 1
        for bucket in LATENCY_BUCKETS:
            if seconds <= bucket:
                self.latency[bucket] += 1

    def text(self) -> str:
        lines = ["# HELP featlab_requests_total Requests answered, by path and status.",
                 "# TYPE featlab_requests_total counter"]
        lines += [f'featlab_requests_total{{path="{p}",status="{s}"}} {n}' for (p, s), n in sorted(self.requests.items())]
        lines += ["# HELP featlab_images_scored_total Images scored, by model.", "# TYPE featlab_images_scored_total counter"]
        lines += [f'featlab_images_scored_total{{model="{m}"}} {n}' for m, n in sorted(self.images.items())]
        lines += ["# HELP featlab_request_seconds Request latency.", "# TYPE featlab_request_seconds histogram"]
        lines += [f'featlab_request_seconds_bucket{{le="{b}"}} {self.latency[b]}' for b in LATENCY_BUCKETS]
        lines += [f'featlab_request_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                  f"featlab_request_seconds_sum {self.latency_sum:.6f}", f"featlab_request_seconds_count {self.latency_count}"]
        return "\n".join(lines) + "\n"


def model_card(detector: Detector) -> dict:
    described = detector.describe()
    return {"name": detector.name, "kind": detector.kind, "score_kind": detector.score_kind,
            "threshold": detector.threshold, "sha256": detector.meta["sha256"], "backbone": described.get("backbone"),
            "weights": described.get("weights"), "trained_on": detector.trained_on,
            "input": {"resize": detector.prep.resize, "crop": detector.prep.crop},
            "faces": described.get("faces", "none")}


def create_app(detectors: list[Detector], settings: ServiceSettings | None = None):
    """The FastAPI application serving ``detectors`` (the first is the default model)."""
    from featlab.service.page import PAGE

    if not detectors:
        raise FeatlabError("serve needs at least one model")
    settings = settings or ServiceSettings()
    by_name = {d.name: d for d in detectors}
    for d in detectors:
        _ = d.prep  # a model without one pixel input (an ensemble of different views) is refused at start-up
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="featlab-serve")
    batchers = {d.name: Batcher(d, settings.max_batch, settings.max_wait_ms, executor) for d in detectors}
    metrics, inflight = Metrics(), {"n": 0}
    app = FastAPI(title="featlab", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        started = time.perf_counter()
        path = request.url.path
        if settings.api_key is not None and path not in ("/healthz", "/"):
            given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                response = error(401, "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)")
                metrics.observe(path, 401, time.perf_counter() - started)
                return response
        if inflight["n"] >= settings.max_inflight:
            response = error(503, f"busy: {settings.max_inflight} requests in flight; retry shortly", {"Retry-After": "1"})
            metrics.observe(path, 503, time.perf_counter() - started)
            return response
        inflight["n"] += 1
        try:
            response = await asyncio.wait_for(call_next(request), settings.timeout_s)
        except asyncio.TimeoutError:
            response = error(504, f"the request took longer than {settings.timeout_s:g} s")
        except Exception:  # noqa: BLE001 - logged here, one sentence to the client
            log.exception("request to %s failed", path)
            response = error(500, "internal error; the server logged it")
        finally:
            inflight["n"] -= 1
        metrics.observe(path, response.status_code, time.perf_counter() - started)
        return response

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "models": list(by_name)}

    @app.get("/v1/models")
    async def models():
        return {"models": [model_card(d) for d in detectors], "settings": settings.public(), "featlab": __version__}

    @app.get("/metrics")
    async def metrics_text():
        batches = ["# HELP featlab_batch_size_total Forward passes, by model and number of images in them.",
                   "# TYPE featlab_batch_size_total counter"]
        batches += [f'featlab_batch_size_total{{model="{name}",size="{size}"}} {n}'
                    for name, batcher in batchers.items() for size, n in sorted(batcher.batches.items())]
        return PlainTextResponse(metrics.text() + "\n".join(batches) + "\n", media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page():
        return HTMLResponse(PAGE)

    async def read_upload(request: Request, single: str = ""):
        """(form, [(filename, bytes)], detector) of a size-checked multipart upload, or the JSON error to answer.

        ``single``: the endpoint takes exactly one file; otherwise a 400 saying "<single> per request"."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_upload_bytes):
            return error(413, f"the upload exceeds {settings.max_upload_bytes:,} bytes")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(415, "send the images as multipart/form-data, field 'file' (repeatable)")
        body = bytearray()
        async for chunk in request.stream():  # counted as it arrives: a missing or lying Content-Length is no way in
            body += chunk
            if len(body) > settings.max_upload_bytes:
                return error(413, f"the upload exceeds {settings.max_upload_bytes:,} bytes")
        try:
            form = await _parse_form(bytes(body), request.headers, settings.max_files)
        except ValueError as bad:
            return error(400, str(bad))
        files = [(item.filename or f"file{i}", await item.read()) for i, item in enumerate(form.getlist("file"))
                 if hasattr(item, "read")]
        if not files:
            return error(400, "no image: send one or more files in the multipart field 'file'")
        if len(files) > settings.max_files:
            return error(413, f"{len(files)} files in one request; the limit is {settings.max_files}")
        name = form.get("model") or detectors[0].name
        detector = by_name.get(str(name))
        if detector is None:
            return error(404, f"no model {name!r} here (loaded: {', '.join(by_name)})")
        if single and len(files) != 1:
            return error(400, f"{single} per request")
        return form, files, detector

    @app.post("/v1/explain")
    async def explain(request: Request):
        upload = await read_upload(request, single="explain takes one image")
        if isinstance(upload, JSONResponse):
            return upload
        form, files, detector = upload
        from featlab.evaluation.explain import resolve_method

        try:
            method = resolve_method(detector, str(form.get("method") or "auto"))
        except FeatlabError as bad:
            return error(400, str(bad))
        filename, data = files[0]
        try:
            png, explanation = await asyncio.get_running_loop().run_in_executor(
                executor, _explain_png, data, detector, method, settings.max_pixels)
        except BadImageError as bad:
            return error(422, f"{filename}: {bad}")
        return Response(png, media_type="image/png", headers={
            "X-Featlab-Score": f"{explanation.score:.6g}", "X-Featlab-Verdict": explanation.verdict,
            "X-Featlab-Method": method, "X-Featlab-Model": detector.name})

    def face_stage(form, detector: Detector):
        """The face stage a request asks for (form field ``faces``: model, detect or none), or the JSON error."""
        mode = str(form.get("faces") or "model")
        if mode not in ("model", "detect", "none"):  # auto decides on a dataset, not on one request
            return error(400, f"faces must be model, detect or none, got {mode!r}")
        try:
            return scoring_stage(detector, mode)[0]
        except FeatlabError as bad:
            return error(400, str(bad))

    @app.post("/v1/score")
    async def score(request: Request):
        upload = await read_upload(request)
        if isinstance(upload, JSONResponse):
            return upload
        form, files, detector = upload
        stage = face_stage(form, detector)
        if isinstance(stage, JSONResponse):
            return stage
        loop = asyncio.get_running_loop()

        def card(value: float) -> dict:
            return {"score": value, "score_kind": detector.score_kind, "threshold": detector.threshold,
                    "verdict": CLASS_NAMES[int(value >= detector.threshold)]}

        async def one(filename: str, data: bytes) -> dict:
            started = time.perf_counter()
            base = {"file": filename, "model": detector.name, "fingerprint": detector.meta["sha256"]}
            if is_video(filename):  # a video among the files: scored as POST /v1/video would, at its defaults
                clip = await loop.run_in_executor(executor, _video, filename, data, detector, stage, 1.0,
                                                  settings.max_video_frames, 3)
                if clip.status == "quarantined":
                    return {"file": filename, "error": clip.reason}
                metrics.images[detector.name] += sum(len(f["faces"]) for f in clip.frames)
                return {**base, "status": clip.status,
                        "video": {"sampled_frames": clip.sampled, "tracks": clip.tracks, "fps": 1.0, "top_k": 3},
                        **(card(clip.score) if clip.status == "ok" else {"error": clip.reason}),
                        "timings_ms": {"total": round((time.perf_counter() - started) * 1000, 3)}}
            try:
                if stage is None:
                    pixels = await loop.run_in_executor(None, _decode, data, detector, settings.max_pixels)
                else:
                    faces = await loop.run_in_executor(None, _faces, data, detector, stage, settings.max_pixels)
            except BadImageError as bad:
                return {"file": filename, "error": str(bad)}
            decoded = time.perf_counter()
            if stage is None:
                value = await batchers[detector.name].score(pixels)
                metrics.images[detector.name] += 1
                found = {}
            else:
                if not faces:
                    return {**base, "status": "no face", "faces": [],
                            "error": f"no face found (MTCNN probability >= {stage.min_score:g})"}
                values = await asyncio.gather(*(batchers[detector.name].score(crop) for _, crop in faces))
                metrics.images[detector.name] += len(faces)
                value = max(values)  # the image's verdict is its most-fake face
                found = {"faces": [{"face": k, "box": [round(v, 1) for v in face.box], "det_score": round(face.score, 4),
                                    **card(v)} for k, ((face, _), v) in enumerate(zip(faces, values))]}
            return {**base, "status": "ok", **card(value), **found,
                    "timings_ms": {"decode": round((decoded - started) * 1000, 3),
                                   "score": round((time.perf_counter() - decoded) * 1000, 3)}}

        results = await asyncio.gather(*(one(filename, data) for filename, data in files))
        status = 200 if any("score" in r for r in results) else 422
        body = {"results": results} if status == 200 else {
            "error": f"no file could be scored: {results[0]['file']}: {results[0]['error']}", "results": results}
        return JSONResponse(body, status_code=status)

    @app.post("/v1/video")
    async def video(request: Request):
        """One video per request: per-video, per-track and per-frame scores (see featlab video)."""
        upload = await read_upload(request, single="video takes one file")
        if isinstance(upload, JSONResponse):
            return upload
        form, files, detector = upload
        try:
            fps = float(form.get("fps") or 1.0)
            max_frames = int(form.get("max_frames") or settings.max_video_frames)
            top_k = int(form.get("top_k") or 3)
        except ValueError:
            return error(400, "fps, max_frames and top_k must be numbers")
        if not (0 < fps <= 30 and 1 <= max_frames <= settings.max_video_frames and top_k >= 1):
            return error(400, f"fps must be in (0, 30], max_frames in 1-{settings.max_video_frames}, top_k >= 1")
        stage = face_stage(form, detector)
        if isinstance(stage, JSONResponse):
            return stage
        filename, data = files[0]
        result = await asyncio.get_running_loop().run_in_executor(
            executor, _video, filename, data, detector, stage, fps, max_frames, top_k)
        if result.status == "quarantined":
            return error(422, f"{filename}: {result.reason}")
        metrics.images[detector.name] += sum(len(f["faces"]) for f in result.frames)
        return {"file": filename, "model": detector.name, "fingerprint": detector.meta["sha256"],
                "status": result.status, "reason": result.reason, "score": None if result.status != "ok" else
                result.score, "score_kind": detector.score_kind, "threshold": detector.threshold,
                "verdict": result.label, "aggregation": f"frame = most-fake face; track and video = mean of the top "
                f"{top_k} scores", "info": result.info, "tracks": result.tracks, "frames": result.frames,
                "seconds": round(result.seconds, 3)}

    return app


def _faces(data: bytes, detector: Detector, stage: FaceStage, max_pixels: int) -> list:
    """[(face, uint8 crop in the model's view)] of every face of an upload, most confident first."""
    image = load_rgb(data, max_pixels=max_pixels)
    return [(face, detector.prep.to_uint8(face.crop)) for face in stage.faces(image)]


def _video(filename: str, data: bytes, detector: Detector, stage, fps: float, max_frames: int, top_k: int):
    """score_video on an uploaded file (PyAV reads files: a private temporary copy, removed after)."""
    import tempfile

    from featlab.data.video import VIDEO_EXTENSIONS
    from featlab.evaluation.video import score_video

    suffix = Path(filename).suffix.lower()
    suffix = suffix if suffix in VIDEO_EXTENSIONS else ".mp4"
    with tempfile.NamedTemporaryFile(suffix=suffix) as handle:
        handle.write(data)
        handle.flush()
        result = score_video(detector, handle.name, stage=stage, fps=fps, max_frames=max_frames, top_k=top_k)
    result.path = filename
    return result


async def _parse_form(body: bytes, headers, max_files: int):
    """The multipart form of an already size-checked body (Starlette's parser, with its own part limits)."""
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    try:
        return await MultiPartParser(Headers(raw=headers.raw), stream(), max_files=max_files + 1, max_fields=16).parse()
    except MultiPartException as bad:
        raise ValueError(f"malformed multipart body: {bad.message}") from None


def _explain_png(data: bytes, detector: Detector, method: str, max_pixels: int):
    """(PNG bytes of the heatmap over the image, the explanation) of one upload (see featlab explain)."""
    import io

    from featlab.evaluation.explain import explain_paths, overlay

    load_rgb(data, max_pixels=max_pixels)  # the service's pixel limit first
    explanation = explain_paths(detector, [data], method)[0]
    if explanation.heatmap is None:
        raise BadImageError(explanation.reason)
    buffer = io.BytesIO()
    overlay(data, explanation).save(buffer, format="PNG")
    return buffer.getvalue(), explanation


def _decode(data: bytes, detector: Detector, max_pixels: int) -> torch.Tensor:
    """Upload bytes -> uint8 pixels in the model's view, or :class:`BadImageError` with the reason."""
    return detector.prep.prepare(load_rgb(data, max_pixels=max_pixels))


def serve(detectors: list[Detector], host: str = "127.0.0.1", port: int = 8000,
          settings: ServiceSettings | None = None) -> None:
    """Run the service until interrupted (uvicorn, one process: the models stay loaded and warm)."""
    import uvicorn

    uvicorn.run(create_app(detectors, settings), host=host, port=port, log_level="warning", access_log=False)


__all__ = ["Batcher", "ServiceSettings", "create_app", "serve"]
