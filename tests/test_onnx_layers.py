"""Each layer's ONNX nodes, alone in a graph, run in onnxruntime as its torch twin does.

For every registry case: a one-layer graph from layer.onnx() (the nodes interop.onnx_model
chains), its parameters as initializers, checked by onnx.checker, run in onnxruntime on the
case's input and compared with torch's forward on the same values. A whole network's export
is test_interop's.
"""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.harness import draw, rel_err, torch_twin
from tests.registry import CASES
from tinyconv import interop

# float32 sums in onnxruntime's order against torch's float64 (test_ops's forward bound)
BOUND = 1e-5


def one_layer_graph(name, case, params):
    """An ONNX model computing the case's layer: "input" (N, *in_shape) -> "output"."""
    in_shape = case.shape[1:]
    names = {local: f"{name}.{local}" for local in params}
    nodes = case.layer.onnx(helper.make_node, "input", "output", names)
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                       ["N", *case.layer.out_shape(in_shape)])],
        [numpy_helper.from_array(value.astype(np.float32 if value.dtype.kind == "f" else
                                              value.dtype), names[local])
         for local, value in params.items()])
    model = helper.make_model(graph, producer_name="tinyconv-tests",
                              ir_version=interop.ONNX_IR_VERSION,
                              opset_imports=[helper.make_opsetid("", interop.ONNX_OPSET)])
    onnx.checker.check_model(model, full_check=True)  # shapes inferred through the nodes too
    return model


@pytest.mark.parametrize("name", CASES)
def test_layer_onnx_matches_torch(name):
    _, case = CASES[name]
    inp, params, _ = draw(case)
    model = one_layer_graph(name, case, params)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": inp.astype(np.float32)})
    with torch.no_grad():
        # inference: eval mode (batch norm's running statistics, no dropout)
        expected = torch_twin(case.layer, params).eval()(torch.from_numpy(inp)).numpy()
    err = rel_err(got, expected)
    assert err < BOUND, f"{name}: onnxruntime differs from torch by {err:.3g} > {BOUND}"
