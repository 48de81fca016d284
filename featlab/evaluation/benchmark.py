"""``featlab benchmark``: the whole comparison the project card describes, in one call.

extract (each backbone, each feature recipe) -> fit-svm -> train-cnn (each arch) -> evaluate on
test -> compare, into one report folder::

    OUT/benchmark.json       every setting, seed, size, cost, version and the hardware
    OUT/results.md           the page: recipe table on valid, test table, per-group tables, costs
    OUT/comparison.{md,html} the comparison of every model's test report (plots embedded)
    OUT/plots/               the per-model plots used by the page

Nothing is tuned on the test split: feature recipes and SVM hyper-parameters are compared on
valid, CNN epochs are chosen on valid; the test split is read once per final model.
Re-running reuses the embedding cache (content-addressed) and every finished model whose
settings are unchanged; a CNN whose training was killed resumes from its last epoch.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from featlab.core.errors import FeatlabError
from featlab.core.fileio import atomic_write_json, atomic_write_text, read_json
from featlab.core.metrics import binary_metrics, group_metrics
from featlab.core.versions import describe_hardware, hardware, library_versions, utc_now
from featlab.core.workspace import Workspace
from featlab.data.dataset import scan_dataset
from featlab.data.groups import find_groups, groups_for
from featlab.detectors.configs import SVMFitConfig, TrainConfig
from featlab.detectors.modelfile import update_model_meta
from featlab.features.backbones import get_spec, load_backbone, resolve_auto
from featlab.features.extract import ExtractionResult, Extractor, extract_together
from featlab.features.recipe import FeatureRecipe, default_recipe
from featlab.reports.report import is_synthetic, write_comparison

log = logging.getLogger(__name__)


_SVM, _CNN = SVMFitConfig(), TrainConfig()  # the fit and training defaults, in one place


@dataclass
class BenchmarkSettings:
    """What a benchmark run does. Every field is recorded in ``benchmark.json``.

    Parameters
    ----------
    backbones : feature extractors for the SVM family (``auto`` resolves as in ``extract``).
    recipes : feature recipes compared on valid for the first backbone (empty: the default only).
    archs : CNN architectures to fine-tune (empty: no CNN); ``arch:N`` trains that arch for N epochs.
    pca, C, gamma : the SVM search (see :func:`featlab.detectors.classical.fit_svm`).
    experts, smooth_C : the SVM family's source experts (``auto``, ``source`` or ``none``) and their smooth
        SVM's C (see :class:`~featlab.detectors.configs.SVMFitConfig`).
    epochs, batch_size, lr, freeze_epochs, precision, image_size : CNN training.
    explain : add a heatmap gallery of that many top hits and errors to each model's report.
    seed : every seed (SVM, PCA, CNN init, data order).
    """

    backbones: list[str] = field(default_factory=lambda: ["auto"])
    recipes: list[dict] = field(default_factory=list)
    archs: list[str] = field(default_factory=lambda: ["resnet50-opennsfw"])
    pca: int | float | None = _SVM.pca
    C: list[float] = field(default_factory=lambda: list(_SVM.C))
    gamma: list = field(default_factory=lambda: list(_SVM.gamma))
    experts: str = _SVM.experts
    smooth_C: float | None = _SVM.smooth_C
    epochs: int = _CNN.epochs
    batch_size: int = _CNN.batch_size
    lr: float = _CNN.lr
    freeze_epochs: int = _CNN.freeze_epochs
    precision: str = "auto"
    image_size: int | None = None
    seed: int = 0
    jobs: int = -1
    explain: int = 0  # gallery of the N most confident hits and errors per model (featlab evaluate --explain)


def _svm_fit(cache, ws: Workspace, name: str, settings: BenchmarkSettings) -> tuple[Path, bool]:
    """Fit (or reuse) one SVM model folder on a cache; returns (folder, reused)."""
    from featlab.detectors.svm import fit_from_cache

    folder = ws.models / name
    wanted = {"cache_key": cache.meta["key"], "pca": settings.pca, "C": settings.C, "gamma": settings.gamma,
              "experts": settings.experts, "smooth_C": settings.smooth_C, "seed": settings.seed}
    meta_path = folder / "meta.json"
    if meta_path.is_file() and read_json(meta_path).get("benchmark") == wanted:
        return folder, True
    folder, _ = fit_from_cache(cache, ws.models, name=name, seed=settings.seed, n_jobs=settings.jobs,
                               pca=settings.pca, C=settings.C, gamma=settings.gamma, experts=settings.experts,
                               smooth_C=settings.smooth_C, force=True)
    update_model_meta(folder, benchmark=wanted)
    return folder, False


def _classifier_words(settings: dict) -> str:
    """What the SVM family's classifier is, for the results page."""
    experts, smooth = settings.get("experts", "none"), settings.get("smooth_C")
    if experts == "none":
        return "SVC"
    words = "SVC experts, one per recorded training source, mixed by a logistic gate (featlab.detectors.experts)"
    return words + (f", blended half and half with a smooth SVC (C {smooth:g}) on every training image" if smooth else "")


def _valid_scores(detector, cache) -> dict:
    """Valid-split metrics of a loaded SVM (overall and per group): selection figures only."""
    from featlab.detectors.svm import check_features

    check_features(detector.meta, cache)
    X, y, index = cache.load_split("valid")
    score, threshold = detector.score_features(X), detector.threshold
    root = cache.meta.get("data_root", "")
    groups = group_metrics(y, score, threshold, groups_for(list(index.path), find_groups(root) if root else {}))
    return {"metrics": binary_metrics(y, score, threshold), "groups": groups}


def _transfer_scores(detector, cache) -> list[dict]:
    """Cross-source transfer on valid: the detector's model kind with its chosen hyper-parameters (an unfitted
    copy, :func:`featlab.detectors.classical.fit_like`), fitted on the train images of one source, scored on the
    valid images of every other source. Recipes that transfer are preferred, since featlab is judged on
    generators it never saw."""
    from featlab.detectors.classical import fit_like, scores
    from featlab.detectors.svm import image_sources

    root = cache.meta.get("data_root", "")
    X_train, y_train, train_index = cache.load_split("train")
    X_valid, y_valid, valid_index = cache.load_split("valid")
    source_of = {split: np.array(image_sources(list(index.path), root), dtype=object)
                 for split, index in (("train", train_index), ("valid", valid_index))}
    sources = sorted({s for s in source_of["train"] if s})
    rows = []
    for train_source in sources:
        mask = source_of["train"] == train_source
        if len(np.unique(y_train[mask])) < 2:
            continue
        pipeline = fit_like(detector.pipeline, X_train[mask], y_train[mask], source_of["train"][mask])
        for test_source in sources:
            test = source_of["valid"] == test_source
            if len(np.unique(y_valid[test])) < 2:
                continue
            score, threshold, _ = scores(pipeline, X_valid[test])
            m = binary_metrics(y_valid[test], score, threshold)
            rows.append({"train": train_source, "test": test_source, "roc_auc": m["roc_auc"],
                         "accuracy": m["accuracy"], "n_test": m["n"]})
    return rows


def _extract(manifest, backbone_name: str, recipes: list[FeatureRecipe], final: FeatureRecipe, ws: Workspace,
             root: Path, progress: bool) -> list[tuple[ExtractionResult, int, float]]:
    """Every recipe of one backbone, as (result, images computed this run, seconds); recipes that share a view are computed in
    one pass over the images (:func:`featlab.features.extract.extract_together`), each into its own cache.

    Candidates are compared on valid, so their pass covers train and valid only: no test image is read for a model
    that is not chosen. The ``final`` recipe's test split is then extracted alone, so the rate its cache records
    (the model's inference cost in the report) is one recipe's, not a shared pass's."""
    backbone = load_backbone(backbone_name)
    extractors = [Extractor(backbone, recipe=recipe) for recipe in recipes]
    together = dict(progress=progress, data_root=str(root.resolve()))
    if len(recipes) == 1:
        result = extract_together(manifest, extractors, ws.features, **together)[0]
        return [(result, result.computed, result.seconds)]
    selection = manifest[manifest.split != "test"]
    results = [(r, r.computed, r.seconds) for r in extract_together(selection, extractors, ws.features, **together)]
    position = recipes.index(final)
    alone = extract_together(manifest, [extractors[position]], ws.features, **together)[0]
    _, computed, seconds = results[position]
    results[position] = (alone, computed + alone.computed, seconds + alone.seconds)
    return results


def _train_cnn(arch: str, root: Path, ws: Workspace, settings: BenchmarkSettings, progress: bool) -> tuple[Path, str]:
    """Train, resume or reuse one CNN; returns (folder, what was done)."""
    from featlab.detectors.cnn import TrainConfig, train_cnn

    arch, _, epochs = arch.partition(":")
    try:
        epochs = int(epochs) if epochs else settings.epochs
    except ValueError:
        raise FeatlabError(f"archs: {arch}:{epochs} should be ARCH or ARCH:EPOCHS") from None
    config = TrainConfig(arch=arch, epochs=epochs, batch_size=settings.batch_size, lr=settings.lr,
                         freeze_epochs=settings.freeze_epochs, precision=settings.precision,
                         image_size=settings.image_size, seed=settings.seed, patience=epochs)
    folder = ws.models / f"bench-cnn-{arch}"
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        meta = read_json(meta_path)
        if meta.get("finished") and meta.get("config") == asdict(config):
            return folder, "reused (finished, same settings)"
    resume = (folder / "train" / "last.pt").is_file() and meta_path.is_file() and \
        read_json(meta_path).get("config") == asdict(config)
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    train_cnn(config, root, folder, resume=resume, progress=progress)
    return folder, "resumed" if resume else "trained"


def run_benchmark(
    data: str | os.PathLike, out: str | os.PathLike, workspace: Workspace, settings: BenchmarkSettings | None = None,
    progress: bool = True, echo=print,
) -> dict:
    """Run the comparison and write the report folder (see module docstring). Returns the summary dict."""
    from featlab.detectors.base import load
    from featlab.evaluation.evaluate import evaluate_model

    settings = settings or BenchmarkSettings()
    root, out = Path(data), Path(out)
    started = time.perf_counter()
    manifest = scan_dataset(root, check_images=False)
    if "test" not in set(manifest.split) or "train" not in set(manifest.split):
        raise FeatlabError(f"{root}: a benchmark needs train and test splits (valid is used for selection)")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"created": utc_now(), "data": _data_summary(root, manifest), "settings": asdict(settings),
                     "hardware": hardware(), "versions": library_versions(), "recipes": [], "models": []}
    reports = []

    # 1. Frozen features + SVM: recipes compared on valid, then the chosen (default) recipe per backbone.
    for position, backbone in enumerate(settings.backbones):
        name, _ = resolve_auto(backbone)
        spec = get_spec(name)
        candidates = [FeatureRecipe.from_dict(r).validate(spec) for r in settings.recipes] if position == 0 else []
        final = default_recipe(spec)
        recipes = [*[c for c in candidates if c != final], final]
        for recipe, (result, computed, seconds) in zip(recipes, _extract(manifest, name, recipes, final, workspace,
                                                                         root, progress)):
            shared = len(result.cache.meta.get("extract_shared_with") or []) + 1
            echo(f"extract {name} [{recipe.describe()}]: {computed} computed in {seconds:.1f} s"
                 + (f" (one pass for {shared} recipes)" if shared > 1 and computed else ""))
            model_name = f"bench-svm-{name}-{result.cache.folder.name.rsplit('-', 1)[-1]}"
            fit_started = time.perf_counter()
            folder, reused = _svm_fit(result.cache, workspace, model_name, settings)
            fit_seconds = time.perf_counter() - fit_started
            detector = load(folder, workspace)  # once, for the valid figures and the test report
            echo(f"  svm {folder.name}: " + ("reusing the finished model" if reused else f"fitted in {fit_seconds:.1f} s"))
            row = {"backbone": name, "recipe": recipe.as_dict(), "describe": recipe.describe(), "dim": recipe.dim(spec),
                   "model": folder.name, "extract_seconds": seconds, "computed": computed,
                   "extract_images_per_s": result.cache.meta.get("extract_images_per_s"), "extract_pass_shared_by": shared,
                   "fit_seconds_this_run": fit_seconds, "default": recipe == final}
            if "valid" in set(manifest.split):
                row["valid"] = _valid_scores(detector, result.cache)
                row["transfer"] = _transfer_scores(detector, result.cache)
                echo(f"  valid ROC-AUC {row['valid']['metrics']['roc_auc']:.4f}")
            summary["recipes"].append(row)
            if recipe == final:
                report, path = evaluate_model(detector, workspace, split="test", explain=settings.explain)
                reports.append(report)
                summary["models"].append({"family": "svm", "model": folder.name, "report": str(path)})

    # 2. Fine-tuned CNNs on the same splits.
    for arch in settings.archs:
        train_started = time.perf_counter()
        folder, done = _train_cnn(arch, root, workspace, settings, progress)
        echo(f"train-cnn {arch}: {done}, {time.perf_counter() - train_started:.1f} s this run")
        report, path = evaluate_model(load(folder, workspace), workspace, split="test", data_root=str(root),
                                      explain=settings.explain)
        reports.append(report)
        summary["models"].append({"family": "cnn", "model": folder.name, "report": str(path)})

    # 3. Compare, and the page.
    for report in reports:
        report["_path"] = next(m["report"] for m in summary["models"] if m["model"] == report["model"]["name"])
    md, page, table = write_comparison(reports, out)
    summary["comparison"] = {"markdown": str(md), "html": str(page)}
    summary["wall_seconds"] = time.perf_counter() - started
    _copy_plots(reports, out / "plots")
    atomic_write_json(out / "benchmark.json", summary)
    atomic_write_text(out / "results.md", results_page(summary, reports, table))
    return summary


def _data_summary(root: Path, manifest) -> dict:
    usable = manifest[manifest.status == "ok"]
    counts = {split: {"real": int(((usable.split == split) & (usable.label == 0)).sum()),
                      "fake": int(((usable.split == split) & (usable.label == 1)).sum())}
              for split in sorted(set(usable.split))}
    known = find_groups(root)
    by_group: dict[str, dict[str, int]] = {}
    for split, names in zip(usable.split, groups_for(list(usable.path), known)):
        for name in names:
            cell = by_group.setdefault(name, {}).setdefault(split, 0)
            by_group[name][split] = cell + 1
    return {"root": str(root.resolve()), "counts": counts, "groups": by_group, "synthetic": is_synthetic(root),
            "quarantined": int((manifest.status != "ok").sum())}


def _copy_plots(reports: list[dict], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for report in reports:
        for name, path in (report.get("plots") or {}).items():
            if path and Path(path).is_file():
                shutil.copyfile(path, folder / f"{report['model']['name']}-{name}.png")


def _auc(metrics: dict) -> str:
    """ROC-AUC with its 95 % interval, as the results page prints it."""
    interval = metrics.get("roc_auc_ci")
    return _f(metrics.get("roc_auc")) + (f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else "")


def _overlap_note(recipes: list[dict]) -> str:
    """Which recipes the valid split cannot tell apart from the best one (their 95 % intervals overlap)."""
    scored = [(r["valid"]["metrics"], r["describe"], r["backbone"]) for r in recipes
              if r.get("valid", {}).get("metrics", {}).get("roc_auc_ci")]
    if len(scored) < 2:
        return "One recipe scored: nothing to tell apart."
    best = max(scored, key=lambda item: item[0]["roc_auc"])
    low = best[0]["roc_auc_ci"][0]
    tied = [f"{backbone} {describe}" for m, describe, backbone in scored
            if m is not best[0] and m["roc_auc_ci"][1] >= low]
    head = f"Best on valid: {best[2]} {best[1]} (ROC-AUC {_auc(best[0])})."
    if not tied:
        return head + " No other recipe's 95% interval reaches its lower bound."
    return (head + f" Within its interval (not distinguishable on this valid split): {', '.join(tied)}; "
            "a gain smaller than the interval is noise.")


def _shared(row: dict) -> str:
    shared = row.get("extract_pass_shared_by") or 1
    return f" (one pass for {shared} recipes)" if shared > 1 else ""


def _f(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def results_page(summary: dict, reports: list[dict], table: str) -> str:
    """The markdown results page: data, hardware, recipes on valid, test table, groups, costs."""
    data, hw, settings = summary["data"], summary["hardware"], summary["settings"]
    lines = [
        "# featlab results" + (" — SYNTHETIC data (not real faces)" if data["synthetic"] else ""),
        "",
        f"Generated by `featlab benchmark` on {summary['created']} in {summary['wall_seconds'] / 60:.1f} min "
        f"(wall time of this run; cached features and finished models are reused on reruns).",
        "",
        "## Data",
        "",
        # the dataset folder's name: the path of the machine that ran it means nothing to a reader
        f"Dataset folder `{Path(str(data['root'])).name}`; quarantined files: {data['quarantined']}.",
        "",
        "| split | real | fake |",
        "|---|---|---|",
        *[f"| {split} | {c['real']} | {c['fake']} |" for split, c in data["counts"].items()],
        "",
    ]
    if data["groups"]:
        splits = list(data["counts"])
        lines += ["| group | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
        lines += [f"| {g} | " + " | ".join(str(c.get(s, 0)) for s in splits) + " |" for g, c in data["groups"].items()]
        lines.append("")
    lines += [
        "## Machine and versions",
        "",
        f"{describe_hardware(hw)}; "
        + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()) + ".",
        "",
        f"Settings: `{ {k: v for k, v in settings.items() if k != 'recipes'} }` (seed {settings['seed']} everywhere).",
        "",
    ]
    if summary["recipes"]:
        group_names = sorted({g["group"] for r in summary["recipes"] for g in r.get("valid", {}).get("groups", [])
                              if g["n_real"] and g["n_fake"]})
        lines += [
            "## Feature recipes, compared on the valid split",
            "",
            "Each row: embeddings of one recipe -> StandardScaler -> PCA -> " + _classifier_words(settings)
            + ", C (and gamma) chosen on valid by balanced accuracy, fitted on train. Selection figures, not test "
            "results. Recipes that share a view are "
            "extracted in one pass over the train and valid images (one decode and one forward per image for all of "
            "them; the rate shown is that pass's); only the default recipe reads the test split, alone, and its rate "
            "is that run's (the model's inference cost).",
            "",
            "| backbone | recipe | dim | valid ROC-AUC (95% CI) | " + " | ".join(f"valid AUC {g}" for g in group_names)
            + " | extract img/s | default |",
            "|---|---|---|---|" + "---|" * len(group_names) + "---|---|",
        ]
        for r in summary["recipes"]:
            valid = r.get("valid", {})
            per = {g["group"]: g["roc_auc"] for g in valid.get("groups", [])}
            lines.append(
                f"| {r['backbone']} | {r['describe']} | {r['dim']} | {_auc(valid.get('metrics', {}))} | "
                + " | ".join(_f(per.get(g)) for g in group_names)
                + f" | {_f(r.get('extract_images_per_s'))}{_shared(r)} | {'yes' if r['default'] else ''} |"
            )
        lines.append("")
        lines += [_overlap_note(summary["recipes"]), ""]
        pairs = list(dict.fromkeys((t["train"], t["test"]) for r in summary["recipes"] for t in r.get("transfer", [])
                                   if t["train"] != t["test"]))
        if pairs:
            lines += [
                "### Do the recipes transfer across sources? (valid split)",
                "",
                "The same model kind fitted on the train images of one source only (the recipe's chosen C and gamma; "
                "source experts: that source's expert and the smooth SVM), scored on the valid images of the other "
                "source: how a recipe may fare on generators it never saw.",
                "",
                "| recipe | " + " | ".join(f"train {a.removeprefix('source=')} -> valid {b.removeprefix('source=')}"
                                          for a, b in pairs) + " |",
                "|---|" + "---|" * len(pairs),
            ]
            for r in summary["recipes"]:
                cells = {(t["train"], t["test"]): t["roc_auc"] for t in r.get("transfer", [])}
                lines.append(f"| {r['describe']} | " + " | ".join(_f(cells.get(p)) for p in pairs) + " |")
            lines.append("")
    lines += ["## Test split: every model", "", table, ""]
    for report in reports:
        groups = report.get("groups") or []
        m = report["metrics"]
        model = report["model"]
        lines += [
            f"### {model['name']}",
            "",
            f"{model['kind'].upper()}, backbone {model['backbone']}, weights {model['weights']}. "
            f"Test: ROC-AUC {_auc(m)}, AP {_f(m['average_precision'])}, accuracy {_f(m['accuracy'])}, "
            f"EER {_f(m['eer'])}; real accuracy {_f(m['per_class_accuracy']['real'])}, "
            f"fake accuracy {_f(m['per_class_accuracy']['fake'])}.",
            "",
        ]
        if groups:
            lines += ["| group | n (real/fake) | ROC-AUC (95% CI) | AP | accuracy | EER | scored against |",
                      "|---|---|---|---|---|---|---|"]
            lines += [
                f"| {g['group']} | {g['n']} ({g['n_real']}/{g['n_fake']}) | {_auc(g)} | "
                f"{_f(g['average_precision'])} | {_f(g['accuracy'])} | {_f(g['eer'])} | {g['scored_against']} |"
                for g in groups
            ]
            lines.append("")
        plots = [name for name in ("roc", "pr", "confusion") if (report.get("plots") or {}).get(name)]
        if plots:
            lines.append(" ".join(f"![{p}](plots/{model['name']}-{p}.png)" for p in plots))
            lines.append("")
    return "\n".join(lines) + "\n"
