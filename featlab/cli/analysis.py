"""``featlab cluster``: unsupervised structure of the embeddings."""

from __future__ import annotations

from pathlib import Path

import typer

from featlab.cli.common import WORKDIR_OPTION, friendly, open_workspace

app = typer.Typer()  # its commands are merged into the featlab command (featlab.cli)


@app.command()
@friendly
def cluster(
    data: Path = typer.Option(..., "--data", help="Dataset root; labels are read only to score the clusters."),
    split: str = typer.Option("test", "--split", help="Split to cluster, or 'all'."),
    backbone: str = typer.Option("auto", "--backbone"),
    weights: str = typer.Option("default", "--weights", help="default, none (random: plumbing only) or a file."),
    recipes: str = typer.Option("auto", "--recipes", help="Feature recipes to cluster, ';'-separated "
                                "(layers[:pooling[:view[:flip]]]; 'auto' = the default, 'pool' = the pooled output)."),
    ae: list[Path] | None = typer.Option(None, "--ae", help="Autoencoder model folder whose latents to cluster too."),
    methods: str = typer.Option("kmeans,gmm,hdbscan", "--methods"),
    k: str = typer.Option("auto", "--k", help="Clusters for k-means / GMM, or 'auto' (best silhouette, 2-8)."),
    map_method: str = typer.Option("umap", "--map", help="2-D map: umap, pca or tsne."),
    components: int = typer.Option(50, "--components", min=2, help="PCA components before clustering."),
    seed: int = typer.Option(0, "--seed"),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default <workdir>/reports/cluster)."),
    device: str = typer.Option("auto", "--device"),
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Cluster embeddings (cached) and autoencoder latents with k-means, a Gaussian mixture and HDBSCAN; score
    purity / ARI / NMI against real/fake and the source groups; draw UMAP maps (cluster.md/html/json)."""
    from featlab.analysis.clustering import cluster_dataset

    if k != "auto" and not k.isdigit():
        raise typer.BadParameter("k is a whole number or 'auto'", param_hint="--k")
    ws = open_workspace(workdir)
    table, written = cluster_dataset(
        data, ws, out or ws.reports / "cluster", split=split, backbone=backbone, weights=weights, recipes=recipes,
        ae_models=[str(a) for a in ae or []], methods=[m.strip() for m in methods.split(",") if m.strip()],
        k=k if k == "auto" else int(k), map_method=map_method, components=components, seed=seed, device=device)
    typer.echo(written["markdown"].read_text().split("\n![")[0])
    typer.echo(f"written: {written['markdown']}, {written['html']}")
