"""``featlab serve``: started on a free loopback port, scored like ``featlab predict``, every limit answered in JSON."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import featlab
from featlab.service.app import ServiceSettings, create_app
from tests.conftest import cli_ok


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(detectors, **settings):
    """The service in a thread on 127.0.0.1:<free port>; stopped (and joined) on exit."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(detectors, ServiceSettings(**settings)), host="127.0.0.1",
                                           port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def models(fitted, synth_root):
    if not (fitted / "models" / "cnn" / "meta.json").is_file():
        cli_ok("train-cnn", "--arch", "custom", "--data", synth_root, "--image-size", "32", "--epochs", "1",
               "--out", fitted / "models" / "cnn", "--workdir", fitted, "--no-progress")
    return fitted, [featlab.load("svm", fitted), featlab.load("cnn", fitted)]


def _images(synth_root: Path, n: int = 4) -> list[Path]:
    return sorted((synth_root / "test" / "fake").iterdir())[:n // 2] + sorted((synth_root / "test" / "real").iterdir())[:n // 2]


def _upload(paths) -> list:
    return [("file", (Path(p).name, Path(p).read_bytes(), "image/png")) for p in paths]


def test_scores_equal_featlab_predict_for_an_svm_and_a_cnn(models, synth_root, tmp_path):
    work, detectors = models
    paths = _images(synth_root)
    with running(detectors) as url:
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "models": ["svm", "cnn"]}
        cards = httpx.get(f"{url}/v1/models").json()["models"]
        assert [c["name"] for c in cards] == ["svm", "cnn"] and cards[0]["sha256"] == detectors[0].meta["sha256"]
        for model in ("svm", "cnn"):
            answer = httpx.post(f"{url}/v1/score", files=_upload(paths), data={"model": model}, timeout=60)
            assert answer.status_code == 200, answer.text
            served = {r["file"]: r for r in answer.json()["results"]}
            cli_ok("predict", model, synth_root / "test", "--out", tmp_path / f"{model}.csv", "--workdir", work)
            import pandas as pd

            table = pd.read_csv(tmp_path / f"{model}.csv")
            expected = {Path(p).name: s for p, s in zip(table.path, table.score)}
            for name, result in served.items():
                assert abs(result["score"] - expected[name]) <= 1e-5, (model, name)
                assert result["verdict"] == ("fake" if result["score"] >= result["threshold"] else "real")
                assert result["model"] == model and result["fingerprint"]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'featlab_images_scored_total{model="svm"} 4' in metrics and "featlab_request_seconds_bucket" in metrics
        assert "<title>featlab</title>" in httpx.get(f"{url}/").text


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, format="PNG")  # 81 M pixels in a few hundred kB
    return buffer.getvalue()


def test_bad_inputs_get_json_while_a_parallel_good_request_succeeds(models, synth_root):
    _, detectors = models
    good = _images(synth_root, 2)
    real = good[0].read_bytes()
    bad = {
        "truncated": (_upload([good[0]])[0][1][0], real[: len(real) // 3]),
        "empty": ("empty.png", b""),
        "not an image": ("notes.png", b"just text, not pixels"),
        "bomb": ("bomb.png", _bomb()),
    }
    with running(detectors[:1], max_pixels=10_000_000, max_upload_bytes=2 * 2**20, max_files=3) as url:
        outcomes, errors = {}, []

        def good_client():
            try:
                for _ in range(3):
                    answer = httpx.post(f"{url}/v1/score", files=_upload(good), timeout=60)
                    assert answer.status_code == 200 and len(answer.json()["results"]) == 2
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        parallel = threading.Thread(target=good_client)
        parallel.start()
        for case, (name, data) in bad.items():
            answer = httpx.post(f"{url}/v1/score", files=[("file", (name, data, "image/png"))], timeout=60)
            outcomes[case] = (answer.status_code, answer.json())
        outcomes["wrong content type"] = (lambda a: (a.status_code, a.json()))(
            httpx.post(f"{url}/v1/score", json={"file": "x"}, timeout=60))
        outcomes["50 MB body"] = (lambda a: (a.status_code, a.json()))(
            httpx.post(f"{url}/v1/score", files=[("file", ("big.png", b"\0" * 50 * 2**20, "image/png"))], timeout=120))
        outcomes["too many files"] = (lambda a: (a.status_code, a.json()))(
            httpx.post(f"{url}/v1/score", files=_upload(good * 2), timeout=60))
        outcomes["no file"] = (lambda a: (a.status_code, a.json()))(
            httpx.post(f"{url}/v1/score", files=[("other", ("a.png", real, "image/png"))], timeout=60))
        outcomes["unknown model"] = (lambda a: (a.status_code, a.json()))(
            httpx.post(f"{url}/v1/score", files=_upload(good[:1]), data={"model": "nope"}, timeout=60))
        parallel.join(timeout=120)
        assert not errors, errors
        assert httpx.get(f"{url}/healthz").status_code == 200  # still serving
    expected = {"truncated": (422, "corrupt or truncated"), "empty": (422, "empty file"),
                "not an image": (422, "not an image format"), "bomb": (422, "possible decompression bomb"),
                "wrong content type": (415, "multipart/form-data"), "50 MB body": (413, "exceeds"),
                "too many files": (413, "the limit is 3"), "no file": (400, "no image"),
                "unknown model": (404, "no model 'nope'")}
    for case, (status, words) in expected.items():
        got_status, body = outcomes[case]
        assert got_status == status and words in body["error"], (case, got_status, body)
        assert "Traceback" not in body["error"] and body["error"].count("\n") == 0


def test_auth_busy_and_timeout(models, synth_root):
    _, detectors = models
    one = _upload(_images(synth_root, 2)[:1])
    with running(detectors[:1], api_key="s3cret") as url:
        assert httpx.post(f"{url}/v1/score", files=one).status_code == 401
        assert httpx.post(f"{url}/v1/score", files=one, headers={"X-API-Key": "wrong"}).status_code == 401
        assert httpx.post(f"{url}/v1/score", files=one, headers={"X-API-Key": "s3cret"}, timeout=60).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200  # health checks need no key
    with running(detectors[:1], max_inflight=1) as url:
        started = threading.Event()

        def slow_body():
            yield b"--x\r\n"
            started.set()
            time.sleep(1.5)
            yield b'Content-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n\r\n--x--\r\n'

        holder = threading.Thread(target=lambda: httpx.post(
            f"{url}/v1/score", content=slow_body(), headers={"content-type": "multipart/form-data; boundary=x"},
            timeout=30))
        holder.start()
        started.wait(10)
        time.sleep(0.2)
        busy = httpx.get(f"{url}/v1/models")
        holder.join(30)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
    with running(detectors[:1], timeout_s=0.05, max_wait_ms=500) as url:
        late = httpx.post(f"{url}/v1/score", files=one, timeout=30)
        assert late.status_code == 504 and "longer than" in late.json()["error"]


def test_serve_cli_refuses_a_missing_model_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from featlab.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "nope"), "--workdir", str(tmp_path)])
    assert result.exit_code == 1 and result.output.strip().startswith("featlab: error:")


def test_micro_batching_puts_concurrent_images_in_one_forward_pass(models, synth_root):
    _, detectors = models
    paths = _images(synth_root, 6)
    with running(detectors[1:], max_wait_ms=300, max_batch=32) as url:
        threads = [threading.Thread(target=lambda p=p: httpx.post(f"{url}/v1/score", files=_upload([p]), timeout=60))
                   for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        lines = [line for line in httpx.get(f"{url}/metrics").text.splitlines() if line.startswith("featlab_batch")]
    sizes = {int(line.split('size="')[1].split('"')[0]): int(line.split()[-1]) for line in lines}
    assert sum(k * v for k, v in sizes.items()) == len(paths) and max(sizes) > 1, sizes
    assert np.isfinite(list(sizes.values())).all()


def test_serve_takes_an_exported_onnx_file(models, synth_root, tmp_path):
    work, detectors = models
    cli_ok("export", "cnn", "--out", tmp_path / "cnn.onnx", "--workdir", work)
    paths = _images(synth_root, 2)
    with running([featlab.load(tmp_path / "cnn.onnx", work)]) as url, running(detectors[1:]) as folder_url:
        exported = httpx.post(f"{url}/v1/score", files=_upload(paths), timeout=60).json()["results"]
        original = httpx.post(f"{folder_url}/v1/score", files=_upload(paths), timeout=60).json()["results"]
    assert [r["model"] for r in exported] == ["cnn", "cnn"]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(exported, original)) <= 1e-4


def test_explain_returns_the_heatmap_png(models, synth_root):
    _, detectors = models
    face = _images(synth_root, 2)[0]
    with running(detectors) as url:
        for model, method in (("cnn", "gradcam"), ("svm", "gradient")):
            answer = httpx.post(f"{url}/v1/explain", files=_upload([face]), data={"model": model, "method": method},
                                timeout=120)
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", answer.text
            assert answer.headers["x-featlab-verdict"] in ("real", "fake") and answer.headers["x-featlab-method"] == method
            image = Image.open(io.BytesIO(answer.content))
            assert image.size[0] > 16 and image.mode == "RGB"
        wrong = httpx.post(f"{url}/v1/explain", files=_upload([face]), data={"model": "svm", "method": "gradcam"})
        assert wrong.status_code == 400 and "needs a CNN" in wrong.json()["error"]
        two = httpx.post(f"{url}/v1/explain", files=_upload([face, face]))
        assert two.status_code == 400 and "one image" in two.json()["error"]
        broken = httpx.post(f"{url}/v1/explain", files=[("file", ("x.png", b"not pixels", "image/png"))])
        assert broken.status_code == 422 and "not an image format" in broken.json()["error"]


def test_faces_and_videos_per_request(models, tmp_path):
    """faces=detect scores every face of an upload (the verdict is the most-fake face), the same numbers as featlab
    predict --faces detect; a video upload gets per-video, per-track and per-frame scores."""
    pytest.importorskip("facenet_pytorch", reason="facenet-pytorch 2.6 is not installed")
    pytest.importorskip("av", reason="PyAV is not installed")
    from tests.data.test_faces import _single_face_images, wild_photo
    from tests.evaluation.test_video import two_face_clip

    work, detectors = models
    photo, _ = wild_photo(_single_face_images(3))
    folder = tmp_path / "wild"
    folder.mkdir()
    photo.save(folder / "group.png")
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(folder / "wall.png")
    clip = two_face_clip(tmp_path / "clip.mp4", seconds=2)
    with running(detectors) as url:
        files = [("file", ("group.png", (folder / "group.png").read_bytes(), "image/png")),
                 ("file", ("wall.png", (folder / "wall.png").read_bytes(), "image/png"))]
        answer = httpx.post(f"{url}/v1/score", files=files, data={"model": "svm", "faces": "detect"}, timeout=120)
        assert answer.status_code == 200, answer.text
        group, wall = answer.json()["results"]
        assert len(group["faces"]) == 3 and group["score"] == max(f["score"] for f in group["faces"])
        assert wall["status"] == "no face" and wall["faces"] == []
        cli_ok("predict", "svm", folder, "--faces", "detect", "--out", tmp_path / "p.csv", "--workdir", work)
        import pandas as pd

        table = pd.read_csv(tmp_path / "p.csv")
        rows = table[table.path.str.endswith("group.png")].sort_values("face")
        assert np.allclose(sorted(rows.score), sorted(f["score"] for f in group["faces"]), atol=1e-5)
        bad = httpx.post(f"{url}/v1/score", files=files[:1], data={"faces": "sideways"})
        assert bad.status_code == 400 and "faces must be" in bad.json()["error"]
        video = httpx.post(f"{url}/v1/video", files=[("file", ("clip.mp4", clip.read_bytes(), "video/mp4"))],
                           data={"model": "svm", "fps": "2", "top_k": "2"}, timeout=120)
        assert video.status_code == 200, video.text
        body = video.json()
        assert body["status"] == "ok" and len(body["tracks"]) == 2 and len(body["frames"]) == 4
        frame_scores = sorted((max(f["score"] for f in frame["faces"]) for frame in body["frames"]), reverse=True)
        assert body["score"] == pytest.approx(np.mean(frame_scores[:2]))
        junk = httpx.post(f"{url}/v1/video", files=[("file", ("x.mp4", b"not a video", "video/mp4"))])
        assert junk.status_code == 422 and "not a readable video" in junk.json()["error"]
        two = httpx.post(f"{url}/v1/video", files=[("file", ("a.mp4", clip.read_bytes(), "video/mp4"))] * 2)
        assert two.status_code == 400 and two.json()["error"] == "video takes one file per request"
        assert httpx.get(f"{url}/healthz").status_code == 200  # still serving
