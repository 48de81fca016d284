"""The onnxruntime engine for any registry backbone: its torch embedding exported to ONNX, run on the CPU.

open_nsfw ships its own ONNX graph (:class:`featlab.features.opennsfw.OnnxRuntimeEmbedding`); every other backbone's
torch module (with the recipe's stages and pooling, :class:`~featlab.features.recipe.LayerTap`) is exported here, in
memory, once per input size, by torch's exporter, and run in fp32 by onnxruntime. Nothing is read from a file, so
this engine adds no loader to check.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from featlab.core.errors import FeatlabError


class ExportedOnnxEmbedding(nn.Module):
    """``module`` (normalised NCHW float32 batch -> (N, dim)) exported to ONNX and run by onnxruntime.

    Parameters
    ----------
    module : the torch embedding (fp32, eval mode); kept only to export it again for another input size.
    threads : onnxruntime intra-op threads (None: its default).
    """

    def __init__(self, module: nn.Module, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime  # noqa: F401 - fail here, in one line, not at the first batch
        except ImportError as error:
            raise FeatlabError("engine onnxruntime needs the onnxruntime package (pip install onnxruntime)") from error
        self.module = module.float().eval()
        self.threads = threads
        self.sessions: dict[tuple[int, int], object] = {}

    def session(self, height: int, width: int):
        """The onnxruntime session for inputs of this size (exported on first use)."""
        key = (height, width)
        if key not in self.sessions:
            import onnxruntime as ort

            buffer = io.BytesIO()
            sample = torch.zeros(2, 3, height, width)
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer warnings about shape-dependent branches, fixed per size here
                torch.onnx.export(self.module, (sample,), buffer, dynamo=False, input_names=["pixels"],
                                  output_names=["embedding"], opset_version=17,
                                  dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}})
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.threads:
                options.intra_op_num_threads = self.threads
            self.sessions[key] = ort.InferenceSession(buffer.getvalue(), sess_options=options,
                                                      providers=["CPUExecutionProvider"])
        return self.sessions[key]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        out = self.session(int(x.shape[2]), int(x.shape[3])).run(["embedding"], {"pixels": x})[0]
        return torch.from_numpy(out)
