"""Extraction benchmark (``make bench``): prints figures, asserts nothing.

For each backbone x precision, on a generated set of JPEGs (256x256 by default):

(a) pure forward pass of the model on random tensors (batch, dtype, channels_last as extract uses);
(b) ``featlab extract`` end to end on a fresh cache (decode + preprocess + forward + cache writes);
(c) a naive per-image loop: PIL -> torchvision transform -> model, batch 1, fp32, NCHW;
(d) a second, fully cached run of (b).

Each configuration runs with the classic embedding (last stage, average pool, standard crop)
and with featlab's default multi-layer recipe (two middle stages, mean + std, native view);
``multi_vs_pooled`` is the ratio of their end-to-end rates (target >= 0.9).

Random weights are used for the torchvision models (speed does not depend on the values); the offline
backbones (resnet50-opennsfw, efficientnet-lite0/2, dinov2-vits14) run their real weights, each also through
onnxruntime fp32 (open_nsfw's shipped graph; the others' torch embedding exported to ONNX), with the default recipe
only and fewer images (``--offline-images``). The summary names the faster engine per backbone on this CPU and the one
the registry's ``cpu_engine`` makes ``--engine auto`` pick.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featlab.data.dataset import load_rgb, scan_dataset
from featlab.features.backbones import load_backbone
from featlab.features.extract import Extractor, extract_manifest
from featlab.features.recipe import CLASSIC, default_recipe


def make_jpegs(root: Path, n: int, size: int = 256, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, share in (("train", 0.7), ("valid", 0.15), ("test", 0.15)):
        for cls in ("real", "fake"):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(int(n * share / 2)):
                base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
                img = Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC)
                img.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def pure_forward(extractor: Extractor, batch: int, iters: int) -> float:
    crop = extractor.preprocessing.crop
    x = torch.randint(0, 255, (batch, 3, crop, crop), dtype=torch.uint8)
    extractor(x)  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        extractor(x)
    return batch * iters / (time.perf_counter() - start)


def naive_loop(backbone, paths: list[str]) -> float:
    model = backbone.model.to(memory_format=torch.contiguous_format).float().eval()
    prep = backbone.preprocessing
    start = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            x = prep.normalize(prep.to_uint8(load_rgb(p))[None])
            model(x)
    return len(paths) / (time.perf_counter() - start)


OFFLINE = ("resnet50-opennsfw", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "dinov2-vits14")


def run(
    models: list[str], precisions: list[str], n_images: int, batch: int, naive_n: int, forward_iters: int,
    offline_images: int = 256,
) -> list[dict]:
    rows = []
    work = Path(tempfile.mkdtemp(prefix="featlab-bench-"))
    try:
        data = make_jpegs(work / "data", n_images)
        small = make_jpegs(work / "small", offline_images)
        paths = list(scan_dataset(data, check_images=False).path)
        for name in models:
            weights = "default" if name in OFFLINE else "none"
            backbone = load_backbone(name, weights)
            naive = naive_loop(load_backbone(name, weights), paths[:naive_n])
            engines = [("torch", p) for p in precisions] + [("onnxruntime", "fp32")]
            recipes = [("pooled", CLASSIC), ("multi-layer", default_recipe(backbone.spec))]
            if name in OFFLINE and name != "resnet50-opennsfw":
                recipes = recipes[1:]
            root = small if name in OFFLINE and name != "resnet50-opennsfw" else data
            for (engine, precision), (recipe_name, recipe) in ((e, r) for e in engines for r in recipes):
                ex = Extractor(backbone, precision=precision, engine=engine, recipe=recipe)
                forward = pure_forward(ex, batch, forward_iters)
                features = work / f"features-{name}-{engine}-{precision}-{recipe_name}"
                start = time.perf_counter()  # scan + hash + decode + forward + cache writes
                first = extract_manifest(scan_dataset(root, check_images=False), ex, features, batch_size=batch,
                                         progress=False)
                first_s = time.perf_counter() - start
                start = time.perf_counter()
                second = extract_manifest(scan_dataset(root, check_images=False), ex, features, batch_size=batch,
                                          progress=False)
                cached_s = time.perf_counter() - start
                extract_rate = first.computed / first_s
                assert second.computed == 0
                row = {
                    "model": name,
                    "engine": engine,
                    "precision": precision,
                    "recipe": recipe_name,
                    "images": first.computed,
                    "forward_img_s": round(forward, 1),
                    "extract_img_s": round(extract_rate, 1),
                    "naive_img_s": round(naive, 1),
                    "extract_vs_forward": round(extract_rate / forward, 3),
                    "extract_vs_naive": round(extract_rate / naive, 2),
                    "first_run_s": round(first_s, 2),
                    "cached_run_s": round(cached_s, 3),
                    "cached_speedup": round(first_s / cached_s, 1),
                }
                if recipe_name == "multi-layer" and len(recipes) == 2:
                    row["multi_vs_pooled"] = round(extract_rate / rows[-1]["extract_img_s"], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(features)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def engine_choice(rows: list[dict]) -> list[dict]:
    """Per backbone: the faster engine end to end with the default recipe (torch at its fastest precision vs
    onnxruntime fp32), beside the one ``--engine auto`` picks on a CPU (the registry's ``cpu_engine``)."""
    from featlab.features.backbones import BACKBONES

    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name and r["recipe"] == "multi-layer"]
        best = {e: max((r for r in mine if r["engine"] == e), key=lambda r: r["extract_img_s"], default=None)
                for e in ("torch", "onnxruntime")}
        if not all(best.values()):
            continue
        faster = max(best.values(), key=lambda r: r["extract_img_s"])
        out.append({"model": name, "torch": f"{best['torch']['precision']} {best['torch']['extract_img_s']}",
                    "onnxruntime": f"fp32 {best['onnxruntime']['extract_img_s']}", "faster": faster["engine"],
                    "auto_picks": BACKBONES[name].cpu_engine if name in BACKBONES else "torch"})
    return out


def print_table(rows: list[dict]) -> None:
    cols = list(dict.fromkeys(c for r in rows for c in r))
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50,resnet50-opennsfw,efficientnet-lite0,efficientnet-lite2,"
                                            "dinov2-vits14")
    parser.add_argument("--offline-images", type=int, default=256,
                        help="images for the offline backbones other than open_nsfw (default recipe only)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--naive-images", type=int, default=200)
    parser.add_argument("--forward-iters", type=int, default=8)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, images {args.images}", flush=True)
    rows = run(
        args.models.split(","), args.precisions.split(","), args.images, args.batch, args.naive_images,
        args.forward_iters, args.offline_images,
    )
    print_table(rows)
    print("\nFaster engine per backbone (default recipe, end to end, images/s):")
    print_table(engine_choice(rows))
    return rows


if __name__ == "__main__":
    main()
