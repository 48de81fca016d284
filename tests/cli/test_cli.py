from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from featlab import __version__
from featlab.cli import app

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("extract", "fit-svm", "train-cnn", "evaluate", "predict", "compare", "data"):
        assert name in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_usage_error_exit_code_2():
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2


def test_data_check_writes_manifest_and_one_line_errors(synth_root, tmp_path):
    result = runner.invoke(app, ["data", "check", str(synth_root), "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.csv").exists()
    missing = runner.invoke(app, ["data", "check", str(tmp_path / "absent")])
    assert missing.exit_code == 1 and missing.output.count("\n") == 1
    assert "dataset folder not found" in missing.output


def test_console_script_runs_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "featlab", "data", "check", str(tmp_path / "absent")], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("featlab: error:") and "Traceback" not in proc.stderr
