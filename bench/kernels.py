"""Every op at LeNet-5's shapes, tinyconv's kernel against torch's: python bench/kernels.py.

Each case is checked before it is timed (forward output and every gradient within 1e-4 of
torch's, relative to the largest magnitude). tinyconv's arguments are prepared in its
batch-last layout outside the clock; torch's backward is timed alone, through
torch.autograd.grad on a graph built once. With --device cuda both run on the GPU, each timed
block of calls between two synchronizations of both libraries (their launches return before
the work is done).
"""

import argparse
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.common from anywhere

from bench.common import (  # noqa: E402
    SETTLE,
    alternate,
    busy_cores,
    busy_warning,
    format_header,
    format_row,
    format_table_head,
    make_header,
    timing_rows,
    write_json,
)

THREADS = 2
BATCH = 128
ROUNDS = 20
STEPS = 10
CHECK_RTOL = 1e-4
SEED = 0

# name -> (op, torch-layout input shapes, parameter shapes); LeNet-5's layers at batch N
CASES = {
    "conv1": ("conv2d", (1, 32, 32), ((6, 1, 5, 5), (6,))),
    "conv2": ("conv2d", (6, 14, 14), ((16, 6, 5, 5), (16,))),
    "conv3": ("conv2d", (16, 5, 5), ((120, 16, 5, 5), (120,))),
    "pool1": ("avgpool2d", (6, 28, 28), ()),
    "pool2": ("avgpool2d", (16, 10, 10), ()),
    "tanh1": ("tanh", (6, 28, 28), ()),
    "fc1": ("linear", (120,), ((84, 120), (84,))),
    "fc2": ("linear", (84,), ((10, 84), (10,))),
    "xent": ("softmax_xent", (10,), ()),
}


def batch_last(a):
    return np.ascontiguousarray(np.moveaxis(a, 0, -1))


# conv1's input is the image, whose gradient nobody needs: in training neither library computes
# it (tinyconv passes dinp=None, torch's input does not require grad), and so neither does this
NO_INPUT_GRAD = {"conv1"}


def flops(op, inp_shape, params, batch):
    """Floating-point operations of one forward call (a multiply-add counts 2); 0 if not a
    layer with weights. The backward does twice as many (dinp and dweight), once as many
    without dinp."""
    if op == "conv2d":
        (oc, c, kh, kw), _ = params
        return 2 * batch * oc * c * kh * kw * (inp_shape[1] - kh + 1) * (inp_shape[2] - kw + 1)
    if op == "linear":
        (out, inp), _ = params
        return 2 * batch * out * inp
    return 0


class Case:
    """One op's forward and backward, set up for tinyconv and for torch on the same data."""

    def __init__(self, op, inp_shape, param_shapes, batch, kernels, torch, device,
                 input_grad=True):
        rng = np.random.default_rng(SEED)
        self.op, self.kernels, self.torch = op, kernels, torch
        x = rng.standard_normal((batch, *inp_shape)).astype(np.float32)
        params = [(rng.standard_normal(s) * 0.1).astype(np.float32) for s in param_shapes]
        labels = rng.integers(0, inp_shape[0], size=batch).astype(np.int64)
        # torch's side, on the device (on the CPU .to shares the arrays): a graph built once,
        # differentiated many times
        self.t_inp = torch.from_numpy(x).to(device).requires_grad_(input_grad)
        self.t_params = [torch.from_numpy(p).to(device).requires_grad_() for p in params]
        self.t_labels = torch.from_numpy(labels).to(device)
        self.t_out = self.torch_forward()
        dout = rng.standard_normal(tuple(self.t_out.shape)).astype(np.float32)
        self.t_dout = torch.from_numpy(dout).to(device)
        # tinyconv's side: batch-last copies on the device and every buffer, made once, in
        # its own memory as a model's are (on the CPU: 64-byte aligned, see kernels.host;
        # torch's timings here measured the same whether its input was aligned or not)
        k = kernels
        inp = batch_last(x)
        self.inp, self.labels = k.to_device(inp), k.to_device(labels)
        self.params = [k.to_device(p) for p in params]
        self.dout = k.to_device(batch_last(dout)) if dout.ndim else dout
        self.out = k.empty(self.dout.shape if op != "softmax_xent" else (batch,))
        self.dinp = k.empty(inp.shape) if input_grad else None
        self.dparams = [k.empty(p.shape) for p in params]
        self.probs = k.empty(inp.shape)

    def torch_forward(self):
        F = self.torch.nn.functional
        x, p = self.t_inp, self.t_params
        return {"conv2d": lambda: F.conv2d(x, *p), "avgpool2d": lambda: F.avg_pool2d(x, 2),
                "tanh": lambda: self.torch.tanh(x), "linear": lambda: F.linear(x, *p),
                "softmax_xent": lambda: F.cross_entropy(x, self.t_labels),
                }[self.op]()

    def torch_backward(self):
        """torch's gradients: the input's (None when it needs none), then the parameters'."""
        wrt = [self.t_inp, *self.t_params] if self.dinp is not None else self.t_params
        grads = self.torch.autograd.grad(self.t_out, wrt, self.t_dout, retain_graph=True)
        return grads if self.dinp is not None else (None, *grads)

    def forward(self):
        k, op = self.kernels, self.op
        if op in ("conv2d", "linear"):
            getattr(k, f"{op}_forward")(self.out, self.inp, *self.params)
        elif op == "avgpool2d":
            k.avgpool2d_forward(self.out, self.inp, 2)
        elif op == "tanh":
            k.tanh_forward(self.out, self.inp)
        else:
            k.softmax_xent_forward(self.out, self.probs, self.inp, self.labels)

    def backward(self):
        k, op = self.kernels, self.op
        if op in ("conv2d", "linear"):
            getattr(k, f"{op}_backward")(self.dinp, *self.dparams, self.dout, self.inp,
                                         self.params[0])
        elif op == "avgpool2d":
            k.avgpool2d_backward(self.dinp, self.dout, 2)
        elif op == "tanh":
            k.tanh_backward(self.dinp, self.out, self.dout)
        else:
            k.softmax_xent_backward(self.dinp, self.probs, self.labels, np.float32(self.dout))

    def check(self, name):
        """Stop the bench unless tinyconv's forward and gradients match torch's."""
        self.forward()
        self.backward()
        host = self.kernels.to_host
        theirs_out = self.t_out.detach().cpu().numpy()
        out = host(self.out)
        ours_out = out.mean() if self.op == "softmax_xent" else np.moveaxis(out, -1, 0)
        theirs_grads = self.torch_backward()
        pairs = [("out", ours_out, theirs_out)]
        if self.dinp is not None:
            pairs.append(("dinp", np.moveaxis(host(self.dinp), -1, 0),
                          theirs_grads[0].cpu().numpy()))
        pairs += [(f"d{i}", host(ours), theirs.cpu().numpy()) for i, (ours, theirs)
                  in enumerate(zip(self.dparams, theirs_grads[1:], strict=True))]
        for tensor, ours, theirs in pairs:
            err = np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)
            if err > CHECK_RTOL:
                sys.exit(f"{name}: {tensor} differs from torch by {err:.3g} > {CHECK_RTOL}")


def adam_calls(kernels, torch, device):
    """tinyconv's Adam kernel over LeNet-5's 61,706 parameters against torch.optim.Adam."""
    from tinyconv.kernels import adam_scalars
    from tinyconv.model import PARAM_COUNT, PARAM_SHAPES

    rng = np.random.default_rng(SEED)
    params = rng.standard_normal(PARAM_COUNT).astype(np.float32)
    grads = rng.standard_normal(PARAM_COUNT).astype(np.float32)
    m, v = np.zeros_like(params), np.zeros_like(params)
    scalars = adam_scalars(1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in PARAM_SHAPES.values()])
    tensors = [torch.from_numpy(params[a:b].copy()).to(device).requires_grad_()
               for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    for tensor, (a, b) in zip(tensors, zip(offsets[:-1], offsets[1:], strict=True), strict=True):
        tensor.grad = torch.from_numpy(grads[a:b].copy()).to(device)
    opt = torch.optim.Adam(tensors, lr=1e-3)
    params, m, v, grads = (kernels.to_device(a) for a in (params, m, v, grads))
    return (lambda: kernels.adam_update(params, m, v, grads, *scalars)), opt.step, PARAM_COUNT


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python bench/kernels.py",
        description="Time every LeNet-5 op, forward and backward, tinyconv against torch, "
                    "after checking that both compute the same thing.")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="threads for both libraries (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=BATCH,
                        help="batch size N (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="timed rounds per case (default %(default)s)")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help="calls per library per round (default %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where both libraries run: cpu (default), or cuda, an NVIDIA GPU "
                             "(tinyconv's numba.cuda kernels against torch's CUDA ops; needs "
                             "numba-cuda and a CUDA build of torch)")
    parser.add_argument("--json", metavar="PATH", help="also write the header and rows as JSON")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    busy = busy_cores()
    import numba
    import torch

    from tinyconv.kernels import DeviceUnavailable, get_backend

    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    try:
        kernels = get_backend(args.device)
    except DeviceUnavailable as exc:
        sys.exit(f"error: {exc}")
    synchronize = None  # the CPU kernels return when done
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"error: --device cuda: torch {torch.__version__} finds no GPU; the "
                     "comparison needs a CUDA build of torch")

        def synchronize():  # a timed block ends only when both libraries' queued work is done
            kernels.synchronize()
            torch.cuda.synchronize()
    header = make_header("bench/kernels.py: every LeNet-5 op, tinyconv kernel vs torch",
                         {"tinyconv (numba)": args.threads, "torch": torch.get_num_threads()},
                         f"per call, min and median over {args.rounds} rounds of {args.steps} "
                         "calls per library, alternating, after 3 warm-up calls; each block "
                         f"after a {SETTLE * 1e3:.0f} ms pause and one untimed call"
                         + (", each block of calls between two device synchronizations"
                            if synchronize else ""), busy)
    header["device"] = (f"cuda: {torch.cuda.get_device_name()}, numba-cuda "
                        f"{version('numba-cuda')}" if synchronize else "cpu")
    print(format_header(header))
    warning = busy_warning(busy)
    if warning:
        print(warning)
    print(format_table_head())
    rows = []
    for name, (op, inp_shape, param_shapes) in CASES.items():
        input_grad = name not in NO_INPUT_GRAD
        case = Case(op, inp_shape, param_shapes, args.batch_size, kernels, torch, args.device,
                    input_grad)
        case.check(name)
        shape = "x".join(map(str, (args.batch_size, *inp_shape)))
        work = flops(op, inp_shape, param_shapes, args.batch_size) / 1e9
        for direction, ours, theirs, factor in (
                ("forward", case.forward, case.torch_forward, 1),
                ("backward" if input_grad else "backward, no dinp", case.backward,
                 case.torch_backward, 2 if input_grad else 1)):
            timings = alternate([ours, theirs], args.rounds, args.steps,
                                synchronize=synchronize)
            unit = "GFLOP/s" if work else "calls/s"
            for row in timing_rows(f"{name} {direction}", shape, timings,
                                   work * factor or 1, unit):
                rows.append(row)
                print(format_row(row), flush=True)
    ours, theirs, count = adam_calls(kernels, torch, args.device)
    timings = alternate([ours, theirs], args.rounds, args.steps, synchronize=synchronize)
    for row in timing_rows("adam update", str(count), timings, 1, "calls/s"):
        rows.append(row)
        print(format_row(row))
    if args.json:
        write_json(args.json, header, rows)


if __name__ == "__main__":
    main()
