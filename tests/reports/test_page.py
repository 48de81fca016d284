"""The comparison page: built from stored reports only, overlaid curves, readable matrices, a real browser."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from featlab.cli import app
from featlab.reports.page import overlay_curves, params_in_words, short_name, text_color
from featlab.reports.report import compare_reports, load_reports
from tests.conftest import cli_ok as ok
from tests.conftest import train_svm_and_cnn

runner = CliRunner()


@pytest.fixture(scope="module")
def reports_dir(synth_root, tmp_path_factory):
    return train_svm_and_cnn(tmp_path_factory.mktemp("work"), synth_root, "svm-a-rather-long-model-name-here", "0.1,1")


def test_page_builds_from_stored_reports_without_models(reports_dir, tmp_path):
    stored = tmp_path / "reports"
    shutil.copytree(reports_dir / "reports", stored)
    paths = sorted(stored.glob("*-test.json"))  # compared from a work folder with no models at all
    result = ok("compare", *paths, "--out", tmp_path / "page", "--workdir", tmp_path / "empty-work")
    assert "SYNTHETIC data" in result.output, "the terminal keeps the SYNTHETIC flag"
    assert "Best: roc_auc:" in result.output
    page = (tmp_path / "page" / "comparison.html").read_text()
    assert "`" not in page, "no literal backticks"
    assert page.count("data:image/png;base64") >= 2 and "http://" not in page and "https://" not in page
    assert "C=" in page and "clf__" not in page, "parameters in words"
    md = (tmp_path / "page" / "comparison.md").read_text()
    assert "| svm-a-rather-long-model-name-here |" in md and "SYNTHETIC" in md


def test_overlaid_curves_have_one_line_per_model(reports_dir):
    reports = load_reports(sorted((reports_dir / "reports").glob("*-test.json")))
    assert all(r["curves"]["roc"]["fpr"][0] == 0.0 for r in reports)
    _, drawn = overlay_curves(reports)
    assert drawn == len(reports) == 2
    table = compare_reports(reports)
    assert list(table.model) == [r["model"]["name"] for r in reports]


def test_contrast_rule_and_names():
    assert text_color(315, 315) == "#ffffff" and text_color(10, 315) == "#000000"
    assert text_color(0, 0) == "#000000"
    assert params_in_words({"clf__C": 1.0, "clf__gamma": "scale"}) == "C=1, gamma=scale"
    assert short_name("x" * 40).count("…") == 1 and len(short_name("x" * 40)) == 34
    # two models of one family stay apart: start and end survive, and a clash keeps the full name
    a, b = "bench-svm-resnet50-opennsfw-layer2-avg", "bench-svm-resnet50-opennsfw-layer3-gem"
    assert short_name(a, (a, b)) != short_name(b, (a, b))
    c, d = "bench-svm-" + "a" * 12 + "X" + "a" * 17 + "-end", "bench-svm-" + "a" * 12 + "Y" + "a" * 17 + "-end"
    assert short_name(c, (c, d)) == c


def test_page_renders_in_headless_chromium(reports_dir, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'; 'make browser' installs it)")
    page = reports_dir / "reports" / "comparison.html"
    if not page.exists():
        ok("compare", "--workdir", reports_dir)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "featlab comparison" in dom.stdout and dom.stdout.count("<img") >= 2
    # every embedded image decodes: an img whose naturalWidth is 0 would be a missing image
    script = tmp_path / "check.html"
    script.write_text(page.read_text().replace(
        "</body>", "<script>window.onload=()=>{document.title='images:'+[...document.images]"
        ".filter(i=>i.naturalWidth>0).length+'/'+document.images.length}</script></body>"))
    checked = subprocess.run([browser, *flags, "--virtual-time-budget=3000", "--dump-dom", script.as_uri()],
                             capture_output=True, text=True, timeout=120)
    title = checked.stdout.split("<title>")[1].split("</title>")[0]
    loaded, total = title.removeprefix("images:").split("/")
    assert loaded == total and int(total) >= 2, title
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, "--window-size=1400,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.stat().st_size > 20_000


def test_figures_for_papers_as_svg_and_pdf(reports_dir, tmp_path):
    paths = sorted((reports_dir / "reports").glob("*-test.json"))
    ok("compare", *paths, "--out", tmp_path / "page", "--figures", "svg,pdf", "--workdir", reports_dir)
    figures = tmp_path / "page" / "figures"
    assert (figures / "curves.svg").read_text().lstrip().startswith("<?xml")
    assert (figures / "cost.pdf").read_bytes()[:4] == b"%PDF"
    bad = runner.invoke(app, ["compare", *map(str, paths), "--out", str(tmp_path / "x"), "--figures", "gif",
                              "--workdir", str(reports_dir)])
    assert bad.exit_code == 1 and "figure format gif not supported" in bad.output
    assert not (tmp_path / "x").exists(), "nothing written on bad input"
