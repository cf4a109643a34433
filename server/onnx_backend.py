"""The ``onnxruntime`` backend: a version's weights exported to ONNX and run by ONNX Runtime on the CPU.

The export is the serving head (weldstream.tiles.ServingHead): argmax, the winning class's softmax
probability, the normalised entropy per pixel and the encoder stages' pooled features are outputs of the
graph, so ONNX Runtime returns what the server sends and watches (a uint8 class map, a float32
confidence, the entropy doubt is made of and the summary drift is measured on) and no logits cross
into torch. The pooled features are traced through the same forward hook eager torch uses, so drift
references the learner computed with torch apply to scans served by ONNX Runtime. Batch, height and
width are dynamic axes: native-size scans and tiles of large ones share one session.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from weldstream.model import ModelConfig
from weldstream.server.backends import Backend, RunNormal, on_this_thread
from weldstream.tiles import PixelMaps, ServingHead

OPSET = 17
INPUT, OUTPUTS = "scan", ("classes", "confidence", "entropy", "features")
EXPORT_SIZE = 64  # the traced example's side; every axis but channels is dynamic


def export_onnx(module: nn.Module, config: ModelConfig) -> bytes:
    """The module (eval mode, on the CPU) and its serving head as an ONNX model, weights included; the
    outputs are ``OUTPUTS`` (without features for a module that has no encoder).

    A copy is exported: the TorchScript exporter leaves the module it traces changed (its outputs differ
    afterwards), and the module is the one that serves if the export is refused.
    """
    module = copy.deepcopy(module)
    example = torch.zeros(1, config.in_channels, EXPORT_SIZE, EXPORT_SIZE)
    head = ServingHead(module)
    outputs = OUTPUTS if head.with_features else OUTPUTS[:3]
    maps = {0: "batch", 1: "height", 2: "width"}
    dynamic = {INPUT: {0: "batch", 2: "height", 3: "width"}, **{name: maps for name in OUTPUTS[:3]}}
    if head.with_features:
        dynamic[OUTPUTS[3]] = {0: "batch"}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation on every call
        torch.onnx.export(head, (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=list(outputs), dynamic_axes=dynamic)
    return buffer.getvalue()


def open_session(model: bytes, threads: int) -> Any:
    """An ONNX Runtime session on the CPU: ``threads`` intra-op threads that do not spin, one inter-op, full
    graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Workers sleep between runs instead of spinning: on a few shared cores a spinning pool takes the CPU
    # from the gRPC threads and the pre- and post-processing (measured: 2x slower forwards under load).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnx_backend(module: nn.Module, config: ModelConfig, threads: int, run_normal: RunNormal = on_this_thread
                 ) -> Backend:
    """Export and open a session. ``run_normal`` runs the session's construction on a thread of normal
    priority: the session's worker threads inherit the priority of the thread that builds it, and the
    loader thread that calls this runs at the lowest."""
    model = export_onnx(module, config)
    session = run_normal(lambda: open_session(model, threads))

    def predict(padded: Tensor) -> PixelMaps:
        return PixelMaps(*(torch.from_numpy(o) for o in session.run(None, {INPUT: padded.contiguous().numpy()})))

    return Backend("onnxruntime", predict, torch_threads=False)
