"""The service's page in headless Chromium: pick a real face, read the verdict and see the heatmap on the page."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import pytest

import featlab
from tests.conftest import REAL_SAMPLE
from tests.service.test_service import _free_port, running

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make setup installs it when root)")


class Tab:
    """The smallest Chrome DevTools Protocol client this test needs (websockets, synchronous)."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.socket, self.next_id = connect(url, max_size=2**24), 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


def test_a_real_face_dropped_on_the_page_gets_its_verdict_and_heatmap(tmp_path):
    pytest.importorskip("websockets")
    work = tmp_path / "work"
    from tests.conftest import cli_ok

    cli_ok("extract", "--data", REAL_SAMPLE, "--no-progress", "--workdir", work)
    cli_ok("fit-svm", "--pca", "32", "--C", "1", "--workdir", work, "--name", "real")
    face = sorted((REAL_SAMPLE / "test" / "fake").iterdir())[0]
    group = None
    try:
        from tests.data.test_faces import _single_face_images, wild_photo

        photo, _ = wild_photo(_single_face_images(3))
        group = tmp_path / "group.jpg"
        photo.save(group, quality=95)
    except (ImportError, pytest.skip.Exception):  # no facenet-pytorch: the faces part is skipped, the page part runs
        pass
    port = _free_port()
    with running([featlab.load("real", work)]) as url:
        browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                    f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
                                    f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline, pages = time.monotonic() + 30, []
            while not pages:
                assert time.monotonic() < deadline, "Chromium did not open its debugging port"
                try:
                    pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
                except httpx.HTTPError:
                    time.sleep(0.2)
            tab = Tab(pages[0]["webSocketDebuggerUrl"])
            tab.call("Page.enable")
            tab.call("Page.navigate", url=url + "/")
            deadline = time.monotonic() + 30
            while tab.evaluate("document.querySelectorAll('#models option').length") != 1:
                assert time.monotonic() < deadline, "the page did not list the model"
                time.sleep(0.2)
            root = tab.call("DOM.getDocument")["root"]["nodeId"]
            picker = tab.call("DOM.querySelector", nodeId=root, selector="#pick")["nodeId"]
            tab.call("DOM.setFileInputFiles", nodeId=picker, files=[str(face)])
            deadline = time.monotonic() + 60
            while not tab.evaluate("document.querySelector('img.heatmap') && document.querySelector('img.heatmap').complete"):
                assert time.monotonic() < deadline, "no verdict / heatmap appeared: " + str(tab.evaluate(
                    "document.getElementById('out').innerText"))
                time.sleep(0.3)
            verdict = tab.evaluate("document.querySelector('.verdict').textContent")
            shown = float(tab.evaluate("document.querySelector('.score').textContent"))
            heat_width = tab.evaluate("document.querySelector('img.heatmap').naturalWidth")
            faces_listed = None
            if group is not None:  # "score every face": a photo of three faces lists three
                tab.evaluate("document.getElementById('faces').checked = true")
                tab.call("DOM.setFileInputFiles", nodeId=picker, files=[str(group)])
                deadline = time.monotonic() + 60
                while faces_listed is None or faces_listed == 0:
                    assert time.monotonic() < deadline, "no faces listed: " + str(tab.evaluate(
                        "document.getElementById('out').innerText"))
                    time.sleep(0.3)
                    faces_listed = tab.evaluate("(document.querySelector('ol.faces') || {children: []}).children.length")
        finally:
            browser.terminate()
            browser.wait(timeout=30)
        served = httpx.post(f"{url}/v1/score", files=[("file", (face.name, face.read_bytes(), "image/jpeg"))],
                            timeout=60).json()["results"][0]
    assert verdict == served["verdict"] and abs(shown - served["score"]) < 1e-4 and heat_width > 16
    assert group is None or faces_listed == 3
