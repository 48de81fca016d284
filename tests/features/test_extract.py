"""Batched extraction and the embedding cache (random weights: plumbing only)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from featlab.core.errors import FeatlabError
from featlab.data.dataset import scan_dataset
from featlab.features.backbones import load_backbone
from featlab.features.cache import EmbeddingCache
from featlab.features.extract import Extractor, extract_dataset, extract_manifest


@pytest.fixture(scope="module")
def extractor():
    return Extractor(load_backbone("resnet18", weights="none"), precision="fp32")


def _run(root, features, extractor, **kw):
    return extract_manifest(scan_dataset(root, check_images=False), extractor, features, progress=False, **kw)


def test_shapes_order_labels_and_cache_hit(synth_root, tmp_path, extractor):
    first = _run(synth_root, tmp_path / "f", extractor, batch_size=8)
    assert first.computed == 56
    X, y, index = first.cache.load_split("train")
    assert X.shape == (32, 512) and X.dtype == np.float32
    assert list(y) == [1 if "/fake/" in p else 0 for p in index.path]
    # order: embedding i belongs to index row i (recompute two rows directly)
    from featlab.data.dataset import load_rgb

    prep = extractor.backbone.preprocessing
    direct = extractor(torch.stack([prep.to_uint8(load_rgb(p)) for p in index.path[:2]]))
    np.testing.assert_allclose(direct, X[:2], atol=1e-4)
    again = _run(synth_root, tmp_path / "f", extractor)
    assert again.computed == 0
    np.testing.assert_array_equal(again.cache.load_split("train")[0], X)
    assert again.cache.folder == first.cache.folder


def test_incremental_add_and_changed_content(synth_root, tmp_path, extractor):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    _run(root, tmp_path / "f", extractor)
    Image.new("RGB", (64, 64), (10, 200, 30)).save(root / "train" / "real" / "new.jpg")
    added = _run(root, tmp_path / "f", extractor)
    assert added.computed == 1
    victim = root / "test" / "fake" / "test_fake_00000.jpg"
    before = added.cache.load_split("test")
    Image.new("RGB", (64, 64), (250, 0, 0)).save(victim)
    changed = _run(root, tmp_path / "f", extractor)
    assert changed.computed == 1
    after = changed.cache.load_split("test")
    row = list(after[2].path).index(str(victim.resolve()))
    assert not np.allclose(before[0][row], after[0][row])


def test_bad_images_are_skipped_with_reasons(synth_root, tmp_path, extractor):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    (root / "valid" / "real" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / "valid" / "fake" / "empty.jpg").write_bytes(b"")
    result = _run(root, tmp_path / "f", extractor)
    bad = result.quarantined
    assert len(bad) == 2 and all(bad.reason.str.len() > 5)
    X, y, index = result.cache.load_split("valid")
    assert len(X) == 12 and "broken.jpg" not in " ".join(index.path)
    assert _run(root, tmp_path / "f", extractor).computed == 0  # failures are remembered


def test_different_keys_never_mix(synth_root, tmp_path):
    a = extract_dataset(synth_root, tmp_path / "f", backbone="resnet18", weights="none", precision="fp32", progress=False)
    b = extract_dataset(synth_root, tmp_path / "f", backbone="resnet18", weights="none", precision="bf16", progress=False)
    assert a.cache.folder != b.cache.folder and b.computed == 56
    assert a.cache.meta["config"]["precision"] == "fp32" and b.cache.meta["config"]["precision"] == "bf16"


KILLED_RUN = textwrap.dedent(
    """
    import sys
    from featlab.features.backbones import load_backbone
    from featlab.data.dataset import scan_dataset
    from featlab.features.extract import Extractor, extract_manifest
    ex = Extractor(load_backbone("resnet18", weights="none"), precision="fp32")
    extract_manifest(scan_dataset(sys.argv[1], check_images=False), ex, sys.argv[2], batch_size=2,
                     shard_size=2, num_workers=0, progress=False)
    """
)


def test_sigkill_mid_run_resumes_without_damage(synth_root, tmp_path, extractor):
    features = tmp_path / "f"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(synth_root), str(features)])
    deadline = time.time() + 120
    while time.time() < deadline and len(list(features.glob("*/shards/*.keys"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = len(list(features.glob("*/shards/*.keys")))
    assert 3 <= committed < 28, "the run should have been killed part-way"
    resumed = _run(synth_root, features, extractor)
    assert 0 < resumed.computed < 56
    clean = _run(synth_root, tmp_path / "clean", extractor)
    for split in ("train", "valid", "test"):
        X, _, index = resumed.cache.load_split(split)
        Xc, _, index_c = clean.cache.load_split(split)
        assert list(index.sha256) == list(index_c.sha256)
        np.testing.assert_allclose(X, Xc, atol=1e-4)
    shards = resumed.cache.folder / "shards"
    assert not list(shards.glob(".*.tmp"))
    assert all(p.with_suffix(".keys").exists() for p in shards.glob("*.npy"))
    keys = [k for f in shards.glob("*.keys") for k in f.read_text().split()]
    assert len(keys) == len(set(keys)) == 56


def test_cache_ignores_uncommitted_shard(tmp_path):
    cache = EmbeddingCache.create(tmp_path, "x", {"backbone": "x"})
    cache.add(["a", "b"], np.ones((2, 3)))
    np.save(cache.folder / "shards" / "orphan.npy", np.zeros((1, 3)))
    reopened = EmbeddingCache.create(tmp_path, "x", {"backbone": "x"})
    assert len(reopened) == 2, "an uncommitted array is never read"
    with reopened.writer_lock():  # orphans are removed only by the cache's single writer
        reopened.clean_orphans()
    assert not (cache.folder / "shards" / "orphan.npy").exists()
    np.testing.assert_array_equal(reopened.get(["b", "a"]), np.ones((2, 3)))


def _decode_counter(monkeypatch) -> list[int]:
    from featlab.features import runtime

    calls = [0]
    original = runtime.ImageTensors.__getitem__

    def counted(self, i):
        calls[0] += 1
        return original(self, i)

    monkeypatch.setattr(runtime.ImageTensors, "__getitem__", counted)
    return calls


@pytest.mark.parametrize("backbone_name, weights, root_kind", [
    ("resnet18", "none", "synthetic"),             # the torch engine (LayerTap)
    ("resnet50-opennsfw", "default", "real"),      # open_nsfw's shipped graph on onnxruntime
])
def test_recipes_extracted_together_equal_each_alone(backbone_name, weights, root_kind, synth_root, tmp_path,
                                                     monkeypatch):
    """One decode and one pass per view for all recipes of a backbone, and every cache holds the numbers (and has
    the key) of its recipe extracted alone."""
    from featlab.features.extract import JointExtractor, extract_together
    from featlab.features.recipe import FeatureRecipe
    from tests.conftest import REAL_SAMPLE

    root = synth_root
    if root_kind == "real":
        root = tmp_path / "real"
        for split in ("train", "test"):
            for label in ("real", "fake"):
                (root / split / label).mkdir(parents=True)
                for path in sorted((REAL_SAMPLE / split / label).glob("*.jpg"))[:3]:
                    shutil.copy(path, root / split / label / path.name)
    manifest = scan_dataset(root, check_images=False)
    backbone = load_backbone(backbone_name, weights=weights)
    recipes = [
        FeatureRecipe(),                                                             # classic pooled output, crop
        FeatureRecipe(("layer2", "layer3"), "avg+std", "crop"),
        FeatureRecipe(("layer3", "layer2"), "gem", "crop", flip=True),               # other order, mirror averaged
        FeatureRecipe(("layer2", "layer3"), "avg+std", "native"),                    # another view: its own pass
    ]
    alone = [extract_manifest(manifest, Extractor(backbone, recipe=r, precision="fp32"), tmp_path / "alone",
                              progress=False, num_workers=0) for r in recipes]
    extract_manifest(manifest, Extractor(backbone, recipe=recipes[1], precision="fp32"), tmp_path / "together",
                     progress=False, num_workers=0)  # one cache already full: the others are still computed
    decodes = _decode_counter(monkeypatch)
    together = extract_together(manifest, [Extractor(backbone, recipe=r, precision="fp32") for r in recipes],
                                tmp_path / "together", progress=False, num_workers=0)
    assert decodes[0] == 2 * len(manifest)  # two views, each image decoded once per view
    for position, (one, joint) in enumerate(zip(alone, together)):
        assert joint.cache.folder.name == one.cache.folder.name
        assert joint.computed == (0 if position == 1 else len(manifest))
        X_one, y_one, index_one = one.cache.load_split("train")
        X_joint, y_joint, index_joint = joint.cache.load_split("train")
        assert list(index_one.path) == list(index_joint.path) and (y_one == y_joint).all()
        np.testing.assert_allclose(X_joint, X_one, rtol=1e-5, atol=1e-5)
    assert len(together[0].cache.meta["extract_shared_with"]) == 2 and not together[3].cache.meta["extract_shared_with"]
    again = extract_together(manifest, [Extractor(backbone, recipe=r, precision="fp32") for r in recipes],
                             tmp_path / "together", progress=False, num_workers=0)
    assert [r.computed for r in again] == [0, 0, 0, 0] and decodes[0] == 2 * len(manifest)
    with pytest.raises(FeatlabError, match="must share"):
        JointExtractor([Extractor(backbone, recipe=recipes[0]), Extractor(backbone, recipe=recipes[3])])
