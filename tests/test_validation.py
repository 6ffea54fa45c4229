"""Bad arguments to the validated ops: a ValueError naming the op, the argument, the expected
and the found, raised before any kernel runs."""

import re

import numpy as np
import pytest

from tinyconv import ops


def f32(*shape):
    return np.zeros(shape, np.float32)


def conv_args(**changes):
    args = {"out": f32(4, 6, 6, 2), "inp": f32(3, 8, 8, 2), "weight": f32(4, 3, 3, 3),
            "bias": f32(4)}
    return {**args, **changes}


def xent_args(**changes):
    args = {"losses": f32(3), "probs": f32(10, 3), "logits": f32(10, 3),
            "labels": np.array([0, 9, 4], np.int64)}
    return {**args, **changes}


BAD = {
    "conv wrong rank": (ops.conv2d_forward, conv_args(inp=f32(3, 8, 8)),
                        "conv2d_forward: inp must have 4 dimensions ('C', 'H', 'W', 'N'), "
                        "found 3 (shape (3, 8, 8))"),
    "conv channel mismatch": (ops.conv2d_forward, conv_args(weight=f32(4, 2, 3, 3)),
                              "conv2d_forward: weight must have C = 3 input channels to match "
                              "inp (3, 8, 8, 2), found 2"),
    "conv kernel too big": (ops.conv2d_forward, conv_args(weight=f32(4, 3, 9, 3)),
                            "conv2d_forward: kernel (KH, KW) must lie between 1 and the input "
                            "size (H, W) = (8, 8), found (9, 3)"),
    "conv float64 input": (ops.conv2d_forward, conv_args(inp=np.zeros((3, 8, 8, 2))),
                           "conv2d_forward: inp must be float32, found float64"),
    "conv strided input": (ops.conv2d_forward, conv_args(inp=f32(3, 8, 8, 4)[..., ::2]),
                           "conv2d_forward: inp must be C-contiguous, found a strided view"),
    "conv wrong out shape": (ops.conv2d_forward, conv_args(out=f32(4, 5, 5, 2)),
                             "conv2d_forward: out must have shape ('OC', 'OH', 'OW', 'N') = "
                             "(4, 6, 6, 2), found (4, 5, 5, 2)"),
    "conv bias length": (ops.conv2d_forward, conv_args(bias=f32(5)),
                         "conv2d_forward: bias must have shape ('OC',) = (4,), found (5,)"),
    "conv list input": (ops.conv2d_forward, conv_args(inp=[[1.0]]),
                        "conv2d_forward: inp must be a numpy array, found list"),
    "conv backward dweight": (ops.conv2d_backward,
                              {"dinp": f32(3, 8, 8, 2), "dweight": f32(4, 3, 3, 2),
                               "dbias": f32(4), "dout": f32(4, 6, 6, 2), "inp": f32(3, 8, 8, 2),
                               "weight": f32(4, 3, 3, 3)},
                              "conv2d_backward: dweight must have shape ('OC', 'C', 'KH', 'KW') "
                              "= (4, 3, 3, 3), found (4, 3, 3, 2)"),
    "pool not divisible": (ops.avgpool2d_forward,
                           {"out": f32(1, 2, 2, 1), "inp": f32(1, 5, 4, 1), "k": 2},
                           "avgpool2d_forward: inp height and width must be divisible by k = 2, "
                           "found (H, W) = (5, 4)"),
    "pool bad k": (ops.avgpool2d_forward, {"out": f32(1, 2, 2, 1), "inp": f32(1, 4, 4, 1),
                                           "k": 0},
                   "avgpool2d_forward: k must be a positive int, found 0"),
    "tanh shape mismatch": (ops.tanh_forward, {"out": f32(3, 4), "inp": f32(4, 3)},
                            "tanh_forward: out must have the shape of inp (4, 3), found (3, 4)"),
    "tanh backward int": (ops.tanh_backward, {"dinp": f32(3), "out": f32(3),
                                              "dout": np.zeros(3, np.int32)},
                          "tanh_backward: dout must be float32, found int32"),
    "linear feature mismatch": (ops.linear_forward, {"out": f32(5, 2), "inp": f32(7, 2),
                                                     "weight": f32(5, 6), "bias": f32(5)},
                                "linear_forward: weight must have IN = 7 columns to match inp "
                                "(7, 2), found 6"),
    "linear wrong rank": (ops.linear_forward, {"out": f32(5, 2), "inp": f32(7, 2, 1),
                                               "weight": f32(5, 7), "bias": f32(5)},
                          "linear_forward: inp must have 2 dimensions ('IN', 'N'), found 3"),
    "label too big": (ops.softmax_xent_forward, xent_args(labels=np.array([0, 10, 4])),
                      "softmax_xent_forward: labels must lie in [0, 10), found 10"),
    "label negative": (ops.softmax_xent_forward, xent_args(labels=np.array([0, -1, 4])),
                       "softmax_xent_forward: labels must lie in [0, 10), found -1"),
    "label float": (ops.softmax_xent_forward, xent_args(labels=np.zeros(3, np.float32)),
                    "softmax_xent_forward: labels must be int64, found float32"),
    "label count": (ops.softmax_xent_backward,
                    {"dlogits": f32(10, 3), "probs": f32(10, 3),
                     "labels": np.zeros(4, np.int64)},
                    "softmax_xent_backward: labels must have shape (N,) = (3,), found (4,)"),
    "adam buffer sizes": (ops.adam_update,
                          {"params": f32(5), "m": f32(5), "v": f32(4), "grads": f32(5),
                           "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                           "weight_decay": 0.0, "step": 1},
                          "adam_update: v must have the shape of params (5,), found (4,)"),
    "adam step zero": (ops.adam_update,
                       {"params": f32(5), "m": f32(5), "v": f32(5), "grads": f32(5),
                        "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                        "weight_decay": 0.0, "step": 0},
                       "adam_update: step must be an int >= 1"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments_are_named(case):
    op, args, message = BAD[case]
    untouched = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}
    with pytest.raises(ValueError, match=re.escape(message)):
        op(**args)
    for name, before in untouched.items():  # nothing was written before the check failed
        assert np.array_equal(args[name], before), f"{name} was written"
