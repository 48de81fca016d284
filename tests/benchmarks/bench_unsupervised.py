"""Without labels on the real faces: clustering table and one-class detectors (writes docs/results-unsupervised.md).

Reads the combined build and the default-recipe feature cache of ``make bench-quality``
(bench-out/quality); trains two autoencoders (all train images; train reals only) there. Run alone:
``.venv/bin/python tests/benchmarks/bench_unsupervised.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from featlab.analysis.clustering import cluster_dataset  # noqa: E402
from featlab.core.versions import describe_hardware, hardware  # noqa: E402
from featlab.core.workspace import Workspace  # noqa: E402
from featlab.detectors.autoencoder import AETrainConfig, train_ae  # noqa: E402
from featlab.detectors.oneclass import ONECLASS, fit_oneclass_from_cache  # noqa: E402
from featlab.evaluation.evaluate import evaluate_model  # noqa: E402
from featlab.features.cache import EmbeddingCache  # noqa: E402

QUALITY = REPO / "bench-out" / "quality"
DATA = QUALITY / "faces" / "combined-real-vs-fake"
CACHE = QUALITY / "featlab-work" / "features" / "resnet50-opennsfw-796b62629bf4"  # default recipe
OUT = REPO / "docs" / "results-unsupervised.md"


def main() -> None:
    import json

    torch.set_num_threads(2)
    if not DATA.is_dir() or not CACHE.is_dir():
        sys.exit("bench_unsupervised: run `make bench-quality` first (it builds the data and the feature cache)")
    ws = Workspace.resolve(QUALITY / "featlab-work")
    timings, ae = {}, {}
    for key, real_only in (("ae-all", False), ("ae-real", True)):
        folder = ws.models / f"bench-{key}"
        start = time.perf_counter()
        if not (folder / "meta.json").is_file() or not json.loads(
                (folder / "meta.json").read_text()).get("finished"):
            train_ae(AETrainConfig(epochs=15, real_only=real_only), DATA, folder,
                     resume=(folder / "train" / "last.pt").is_file(), progress=True)
        recorded = json.loads((folder / "meta.json").read_text()).get("train_seconds")
        timings[f"train {key} (15 epochs, 64 px)"] = recorded or time.perf_counter() - start
        ae[key] = folder
    start = time.perf_counter()
    table, written = cluster_dataset(DATA, ws, QUALITY / "cluster", split="test", recipes="auto;pool",
                                     ae_models=[str(ae["ae-all"])], seed=0)
    timings["cluster (test split, 2 recipes + AE latents, 3 methods, UMAP)"] = time.perf_counter() - start
    rows = []
    cache = EmbeddingCache(CACHE)
    for method in ONECLASS:
        start = time.perf_counter()
        folder = fit_oneclass_from_cache(cache, ws.models, method, pca=64, seed=0, name=f"bench-oneclass-{method}",
                                         data_root=DATA)
        report, _ = evaluate_model(folder, ws, split="test", plots=False)
        rows.append((f"{method} on embeddings (layer2+3 mean+std, PCA 64)", report, time.perf_counter() - start))
    report, _ = evaluate_model(ae["ae-real"], ws, split="test", plots=False, data_root=str(DATA))
    rows.append(("autoencoder trained on reals, reconstruction error (64 px)", report, timings["train ae-real (15 epochs, 64 px)"]))

    def group(report, name):
        found = [g for g in report["groups"] if g["group"] == name]
        return f"{found[0]['roc_auc']:.3f}" if found and found[0].get("roc_auc") is not None else "n/a"

    import json

    from featlab.data.dataset import scan_dataset

    test = scan_dataset(DATA, check_images=False)
    test = test[test.split == "test"]
    n_test = len(test)
    chance_label = test.label.value_counts().max() / n_test
    chance_source = test.path.map(lambda p: Path(p).name.startswith("f140k")).value_counts().max() / n_test
    shown = table[["features", "method", "k", "clusters", "noise", "purity_label", "ari_label", "nmi_label",
                   "purity_group", "ari_group", "nmi_group"]]
    lines = [
        "# Without labels: clustering and one-class detection on the real faces", "",
        f"Written by `tests/benchmarks/bench_unsupervised.py` on {describe_hardware(hardware())}, "
        f"torch {torch.__version__}. Data: the combined build of `../shared/faces` (seed 0). Clustering: its test "
        f"split ({n_test} images), labels and source groups read only to score. "
        "One-class detectors: fitted on the train split's 1,527 real faces only; test ROC-AUC.", "",
        f"## Clustering (k by silhouette, 2-8; purity of one single cluster: {chance_label:.3f} for real/fake, "
        f"{chance_source:.3f} for source)", "",
        "| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns),
        *["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
          for row in shown.itertuples(index=False)], "",
        "Maps: `bench-out/quality/cluster/cluster.html` (UMAP, coloured by cluster, true label, source).", "",
        "## One-class detectors (never saw a fake)", "",
        "| detector | test ROC-AUC | AP | 140K | CIPLAB | accuracy at its own threshold | fit / train s |",
        "|---|---|---|---|---|---|---|",
        *[f"| {name} | {r['metrics']['roc_auc']:.3f} | {r['metrics']['average_precision']:.3f} | "
          f"{group(r, 'source=140k')} | {group(r, 'source=ciplab')} | {r['metrics']['accuracy']:.3f} | {s:.1f} |"
          for name, r, s in rows], "",
        "Supervised, same test split (docs/results.md): SVM 0.813 (140K 0.901, CIPLAB 0.698); fine-tuned "
        "resnet50-opennsfw 0.811.", "",
        "## Timings", "", *[f"- {k}: {v:.1f} s" for k, v in timings.items()], "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
