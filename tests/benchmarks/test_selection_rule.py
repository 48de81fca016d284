"""The selection rule of ``make bench-backbones``: a candidate replaces the default only beyond the noise."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
bench_backbones = pytest.importorskip("bench_backbones")


def _frame(shift_inside: float, shift_across: float, seed: int, n: int = 160) -> pd.DataFrame:
    """Valid images of two sources; scores separate fakes from reals by the given shifts (in and across sources)."""
    rng = np.random.default_rng(seed)
    source = np.repeat(["140k", "ciplab"], n // 2)
    label = np.tile(np.repeat([0, 1], n // 4), 2)
    noise = np.random.default_rng(99).normal(size=(2, n))  # shared by every candidate: a paired comparison
    return pd.DataFrame({"source": source, "label": label,
                         "inside": noise[0] + shift_inside * label + 0.3 * rng.normal(size=n),
                         "across": noise[1] + shift_across * label + 0.3 * rng.normal(size=n)},
                        index=pd.Index([f"img{i:03d}.jpg" for i in range(n)], name="path"))


def _row(name: str, frame: pd.DataFrame) -> dict:
    from sklearn.metrics import roc_auc_score

    parts = [roc_auc_score(frame.label, frame.inside)]
    for source in ("ciplab", "140k"):
        part = frame[frame.source == source]
        parts.append(roc_auc_score(part.label, part.across))
    return {"candidate": name, "frame": frame, "score": float(np.mean(parts))}


def test_rule_keeps_the_default_within_the_noise_and_switches_beyond_it():
    default = _row("default", _frame(1.0, 0.2, seed=0))
    close = _row("close", _frame(1.05, 0.2, seed=1))  # a hair better: within the noise
    far = _row("far", _frame(2.5, 1.5, seed=2))  # much better in and across sources
    ensemble = {"candidate": "ensemble", "frame": None, "score": None}  # no rule score: never chosen

    assert bench_backbones.apply_rule([default, close, ensemble], "default") is default
    assert close["gain"][1] < 0 < close["gain"][2]  # its interval reaches zero
    assert default["gain"] == (0.0, 0.0, 0.0)
    assert bench_backbones.apply_rule([default, close, far, ensemble], "default") is far
    assert far["gain"][1] > 0 and far["gain"][0] == pytest.approx(far["score"] - default["score"])


def test_rule_refuses_candidates_scored_on_other_images():
    default = _row("default", _frame(1.0, 0.2, seed=0))
    other = _frame(1.0, 0.2, seed=1)
    other.index = [f"other{i}.jpg" for i in range(len(other))]
    with pytest.raises(RuntimeError, match="not the default's"):
        bench_backbones.apply_rule([default, _row("other", other)], "default")
