"""Without labels: clustering of embeddings / autoencoder latents (one-class detectors: featlab.detectors.oneclass).

Clustering (``featlab cluster``): features are standardised and reduced by PCA (50 components
by default; distances in 1,000+ dimensions carry little), then grouped by k-means, a diagonal
Gaussian mixture, or HDBSCAN (scikit-learn's). ``k="auto"`` picks k in 2..8 by silhouette.
Labels are read only to score the grouping: purity, adjusted Rand index and normalised mutual
information against real/fake and against the source groups. HDBSCAN's noise points count as one
more cluster. A 2-D map (UMAP from ``umap-learn``; PCA or t-SNE as fallbacks) shows clusters and
true labels side by side.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import HDBSCAN, KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from featlab import CLASS_NAMES
from featlab.core.errors import FeatlabError
from featlab.core.versions import library_versions, utc_now

log = logging.getLogger(__name__)

CLUSTERINGS = ("kmeans", "gmm", "hdbscan")
MAPS = ("umap", "pca", "tsne")
AUTO_KS = range(2, 9)

# ---------------------------------------------------------------------------- scores


def purity(truth, clusters) -> float:
    """Share of points whose cluster's majority class is their own class."""
    table = pd.crosstab(np.asarray(clusters), np.asarray(truth))
    return float(table.max(axis=1).sum() / table.values.sum())


def cluster_scores(truth, clusters) -> dict:
    """Purity, adjusted Rand index and normalised mutual information of a grouping against ``truth``."""
    return {"purity": purity(truth, clusters), "ari": float(adjusted_rand_score(truth, clusters)),
            "nmi": float(normalized_mutual_info_score(truth, clusters))}


# -------------------------------------------------------------------------- clustering


def reduce(X: np.ndarray, components: int = 50, seed: int = 0) -> np.ndarray:
    """Standardise, then PCA to at most ``components`` (capped by the data)."""
    X = StandardScaler().fit_transform(np.asarray(X, dtype=np.float64))
    n = min(components, X.shape[0] - 1, X.shape[1])
    return PCA(n_components=n, random_state=seed).fit_transform(X) if n < X.shape[1] else X


def cluster(X: np.ndarray, method: str, k: int, seed: int = 0) -> np.ndarray:
    """Cluster labels of ``X`` (already reduced); HDBSCAN ignores ``k`` and marks noise -1."""
    if method == "kmeans":
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(X)
    if method == "gmm":
        return GaussianMixture(n_components=k, covariance_type="diag", random_state=seed).fit(X).predict(X)
    if method == "hdbscan":
        return HDBSCAN(min_cluster_size=max(5, len(X) // 50), copy=True).fit_predict(X)
    raise FeatlabError(f"clustering must be one of {', '.join(CLUSTERINGS)}")


def choose_k(X: np.ndarray, method: str, seed: int = 0, ks=AUTO_KS, sample: int = 2000) -> tuple[int, dict]:
    """The k with the best silhouette (on a seeded sample of at most ``sample`` points); returns (k, scores)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(X), size=min(sample, len(X)), replace=False)
    scores = {}
    for k in ks:
        if k >= len(X):
            break
        labels = cluster(X, method, k, seed)
        scores[k] = float(silhouette_score(X[pick], labels[pick])) if len(set(labels[pick])) > 1 else -1.0
    if not scores:
        raise FeatlabError("too few images to cluster")
    return max(scores, key=scores.get), scores


def map_2d(X: np.ndarray, method: str = "umap", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates for the picture; falls back to PCA when umap-learn is missing."""
    if method not in MAPS:
        raise FeatlabError(f"map must be one of {', '.join(MAPS)}")
    if method == "umap":
        try:
            import umap
        except ImportError:
            log.warning("umap-learn is not installed; the map falls back to PCA")
            method = "pca"
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": seeded means serial
                return umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(X), "umap"
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, random_state=seed, init="pca").fit_transform(X), "tsne"
    return PCA(n_components=2, random_state=seed).fit_transform(X), "pca"


def run_clustering(
    features: dict[str, np.ndarray], labels: np.ndarray, groups: np.ndarray | None, methods=CLUSTERINGS,
    k: int | str = "auto", seed: int = 0, components: int = 50,
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]]:
    """Cluster every feature source with every method and score it.

    Returns
    -------
    (table with one row per source x method: k, clusters, purity/ari/nmi vs real/fake and vs groups,
    seconds; {source: (reduced X, {method: cluster labels})} for the maps)
    """
    rows, kept = [], {}
    for source, X in features.items():
        reduced = reduce(X, components, seed)
        kept[source] = (reduced, {})
        for method in methods:
            started = time.perf_counter()
            silhouettes = {}
            if method == "hdbscan":
                chosen = None
            elif k == "auto":
                chosen, silhouettes = choose_k(reduced, method, seed)
            else:
                chosen = int(k)
            clusters = cluster(reduced, method, chosen or 0, seed)
            kept[source][1][method] = clusters
            row = {"features": source, "method": method, "k": chosen if chosen else "auto (density)",
                   "clusters": int(len(set(clusters))), "noise": int((clusters == -1).sum()),
                   **{f"{name}_label": value for name, value in cluster_scores(labels, clusters).items()}}
            if groups is not None:
                row.update({f"{name}_group": value for name, value in cluster_scores(groups, clusters).items()})
            row["silhouette_by_k"] = silhouettes
            row["seconds"] = time.perf_counter() - started
            rows.append(row)
    return pd.DataFrame(rows), kept


def plot_maps(kept: dict, labels: np.ndarray, groups: np.ndarray | None, out: Path, method: str = "umap",
              seed: int = 0) -> dict[str, Path]:
    """Per feature source: a 2-D map coloured by cluster (first method), by real/fake and by group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    for source, (X, clusterings) in kept.items():
        xy, used = map_2d(X, method, seed)
        first = next(iter(clusterings))
        panels = [(f"{first} clusters", clusterings[first]), ("true label", np.asarray(CLASS_NAMES)[labels])]
        if groups is not None:
            panels.append(("source group", groups))
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
        for ax, (title, colour) in zip(np.atleast_1d(axes), panels):
            codes, names = pd.factorize(pd.Series(colour).astype(str), sort=True)
            scatter = ax.scatter(xy[:, 0], xy[:, 1], c=codes, cmap="tab10", s=6, alpha=0.7, vmin=0, vmax=9)
            ax.set(title=title, xticks=[], yticks=[])
            if len(names) <= 10:
                ax.legend(scatter.legend_elements()[0], list(names), fontsize=7, loc="best", markerscale=0.8)
        fig.suptitle(f"{source}: {used.upper()} map")
        fig.tight_layout()
        path = out / f"map-{_slug(source)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written[source] = path
    return written


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)[:60]


# ------------------------------------------------------------------- a dataset, end to end


def _source_groups(paths: list[str], root) -> np.ndarray | None:
    """One group per image for scoring: its ``source=`` group (else its first group); None when none is known."""
    from featlab.data.groups import find_groups, groups_for

    names = groups_for(paths, find_groups(root))
    picked = [next((g for g in found if g.startswith("source=")), found[0] if found else "") for found in names]
    return np.asarray(picked) if any(picked) else None


def cluster_dataset(
    data_root: str | os.PathLike, workspace, out: str | os.PathLike, split: str = "test", backbone: str = "auto",
    weights: str = "default", recipes: str = "auto", ae_models: list[str] | None = None, methods=CLUSTERINGS, k: int | str = "auto",
    map_method: str = "umap", components: int = 50, seed: int = 0, device: str = "auto", progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Cluster a split's embeddings (each recipe; cached) and autoencoder latents; write cluster.{md,html,json}.

    Labels and groups are read only to score the clusters.
    """
    from featlab.data.dataset import scan_dataset
    from featlab.detectors.autoencoder import latents
    from featlab.features.backbones import load_backbone, resolve_auto
    from featlab.features.extract import Extractor, extract_manifest
    from featlab.features.recipe import parse_recipe_list
    from featlab.reports.report import is_synthetic

    for method in methods:
        if method not in CLUSTERINGS:
            raise FeatlabError(f"clustering must be one of {', '.join(CLUSTERINGS)}")
    root, out = Path(data_root), Path(out)
    manifest = scan_dataset(root, check_images=False)
    if split != "all":
        if split not in set(manifest.split):
            raise FeatlabError(f"{root}: no split {split!r}")
        manifest = manifest[manifest.split == split]
    manifest = manifest[manifest.status == "ok"].reset_index(drop=True)
    name, _ = resolve_auto(backbone)
    loaded = load_backbone(name, weights)
    features: dict[str, np.ndarray] = {}
    usable = None
    for recipe in parse_recipe_list(loaded.spec, recipes):
        result = extract_manifest(manifest, Extractor(loaded, device=device, recipe=recipe), workspace.features,
                                  progress=progress, data_root=str(root), write_index=False)
        ok = result.manifest.status == "ok"
        usable = ok if usable is None else usable & ok
        features[f"{name} {recipe.describe()}"] = result
    rows = manifest[usable.to_numpy()].reset_index(drop=True) if usable is not None else manifest
    features = {key: result.cache.get(list(rows.sha256)) for key, result in features.items()}
    for model in ae_models or []:
        codes, kept = latents(model, list(rows.path), device)
        if len(kept) != len(rows):
            raise FeatlabError(f"{model}: {len(rows) - len(kept)} images did not decode for the autoencoder")
        features[f"autoencoder {Path(model).name} latents"] = codes
    labels = rows.label.to_numpy()
    groups = _source_groups(list(rows.path), root)
    table, kept = run_clustering(features, labels, groups, methods, k, seed, components)
    out.mkdir(parents=True, exist_ok=True)
    maps = plot_maps(kept, labels, groups, out, map_method, seed)
    context = {"data": str(root.resolve()), "split": split, "n_images": int(len(rows)),
               "synthetic": is_synthetic(root), "backbone": name, "weights": loaded.weights.get("source"),
               "pretrained": bool(loaded.weights.get("pretrained")), "methods": list(methods), "k": k,
               "components": components, "map": map_method, "seed": seed, "created": utc_now(),
               "versions": library_versions()}
    written = write_cluster_report(table, maps, context, out)
    return table, written


def write_cluster_report(table: pd.DataFrame, maps: dict[str, Path], context: dict, out: Path) -> dict[str, Path]:
    """cluster.md, cluster.html (tables + maps, self-contained) and cluster.json."""
    from featlab.reports.report import write_table_report

    columns = ["features", "method", "k", "clusters", "noise", "purity_label", "ari_label", "nmi_label"]
    columns += [c for c in ("purity_group", "ari_group", "nmi_group") if c in table]
    head = (f"Data: {context['data']} ({context['split']}, {context['n_images']} images"
            f"{', SYNTHETIC' if context['synthetic'] else ''}); backbone {context['backbone']} "
            f"({context['weights']}{'' if context['pretrained'] else ', RANDOM WEIGHTS: plumbing only'}); PCA "
            f"{context['components']} before clustering; k {context['k']} (auto: best silhouette, 2-8); seed "
            f"{context['seed']}. Labels and groups are used only to score the clusters. Chance purity is the "
            "majority class's share.")
    return write_table_report(out, "cluster", head, table[columns + ["seconds"]],
                              [(f"map of {source}", path) for source, path in maps.items()],
                              {"context": context, "rows": table.to_dict(orient="records")})
