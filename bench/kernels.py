"""Every op at LeNet-5's shapes (and the new blocks' at LeNet-like ones), tinyconv's kernels
against torch's: python bench/kernels.py.

Each case is checked before it is timed (forward output and every gradient within 1e-4 of
torch's, relative to the largest magnitude). tinyconv's arguments are prepared in its
batch-last layout outside the clock; torch's backward is timed alone, through
torch.autograd.grad on a graph built once. With --device cuda both run on the GPU, each timed
block of calls between two synchronizations of both libraries (their launches return before
the work is done).
"""

import argparse
import math
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
    flops,
    format_header,
    format_row,
    format_table_head,
    make_header,
    timing_rows,
    write_json,
)
from tests.registry import CASES, REGISTRY  # noqa: E402  (the layers' cases, as tested)

THREADS = 2
BATCH = 128
ROUNDS = 20
STEPS = 10
CHECK_RTOL = 1e-4
SEED = 0

CLASSES = 10


def batch_last(a):
    return np.ascontiguousarray(np.moveaxis(a, 0, -1))


class Side:
    """What both kinds of case share: the check against torch before timing."""

    def check(self, name):
        """Stop the bench unless tinyconv's forward and gradients match torch's."""
        self.forward()
        self.backward()
        theirs_grads = self.torch.autograd.grad(self.checked_out, self.checked_wrt, self.t_dout,
                                                retain_graph=True)
        pairs = [("out", self.our_output(), self.checked_out.detach().cpu().numpy())]
        pairs += [(tensor, ours, theirs.cpu().numpy()) for tensor, ours, theirs
                  in zip(self.grad_names, self.our_grads(), theirs_grads, strict=True)]
        for tensor, ours, theirs in pairs:
            err = np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)
            if err > CHECK_RTOL:
                sys.exit(f"{name}: {tensor} differs from torch by {err:.3g} > {CHECK_RTOL}")

    def torch_backward(self):
        """torch's gradients of self.wrt, from the graph built once."""
        return self.torch.autograd.grad(self.t_out, self.wrt, self.t_dout, retain_graph=True)


class LayerCase(Side):
    """A layer's forward and backward, set up for tinyconv (the layer's own calls of its
    kernels) and for torch (its twin, interop.torch_layer) on the same data."""

    def __init__(self, layer, in_shape, batch, kernels, torch, device, input_grad=True,
                 check_twin=None):
        from tinyconv.interop import torch_layer
        from tinyconv.nn import Pass, Tensors

        rng = np.random.default_rng(SEED)
        self.layer, self.kernels, self.torch = layer, kernels, torch
        self.run = Pass(training=True)
        x = rng.standard_normal((batch, *in_shape)).astype(np.float32)
        params = {name: (rng.standard_normal(shape) * 0.1).astype(np.float32)
                  for name, shape in layer.params(in_shape).items()}
        # running statistics as a few steps in would leave them (a variance is positive)
        buffers = {name: (rng.uniform(0.5, 1.5, shape) if np.dtype(dtype).kind == "f"
                          else np.zeros(shape)).astype(dtype)
                   for name, (shape, dtype) in layer.buffers(in_shape).items()}
        # torch's side, on the device (on the CPU .to shares the arrays): a graph built once,
        # differentiated many times. A layer whose torch module computes something else by
        # design (Dropout: torch draws its own mask) is checked against check_twin(spec), the
        # tests' twin on tinyconv's mask, and timed as torch's own
        self.module = module = torch_layer(layer.spec()).to(device)
        checked = module if check_twin is None else check_twin(layer.spec()).to(device)
        state = {**params, **buffers}
        with torch.no_grad():
            for torch_module in {id(m): m for m in (module, checked)}.values():
                for name, tensor in torch_module.state_dict().items():
                    tensor.copy_(torch.from_numpy(state[name]))
        named = dict(module.named_parameters())
        self.t_inp = torch.from_numpy(x).to(device).requires_grad_(input_grad)
        self.t_out = self.torch_forward()
        self.wrt = [self.t_inp] * input_grad + [named[name] for name in params]
        self.grad_names = ["dinp"] * input_grad + [f"d{name}" for name in params]
        checked_params = dict(checked.named_parameters())
        self.checked_out = checked(self.t_inp)
        self.checked_wrt = [self.t_inp] * input_grad + [checked_params[name] for name in params]
        dout = rng.standard_normal(tuple(self.t_out.shape)).astype(np.float32)
        self.t_dout = torch.from_numpy(dout).to(device)
        # tinyconv's side: batch-last copies on the device and every buffer, made once, in
        # its own memory as a model's are (on the CPU: 64-byte aligned, see kernels.host;
        # torch's timings here measured the same whether its input was aligned or not)
        k = kernels
        inp = batch_last(x)
        work = {**layer.workspace(in_shape, batch), **layer.grad_workspace(in_shape, batch)}
        self.t = Tensors(inp=k.to_device(inp), out=k.empty((*layer.out_shape(in_shape), batch)),
                         dinp=k.empty(inp.shape) if input_grad else None,
                         dout=k.to_device(batch_last(dout)),
                         work={name: k.empty(shape) for name, shape in work.items()})
        self.p = {name: k.to_device(value) for name, value in state.items()}
        self.g = {name: k.empty(value.shape) for name, value in params.items()}

    def forward(self):
        self.layer.forward(self.kernels, self.t, self.p, self.run)

    def backward(self):
        self.layer.backward(self.kernels, self.t, self.p, self.g, self.run)

    def torch_forward(self):
        return self.module(self.t_inp)

    def our_output(self):
        return np.moveaxis(self.kernels.to_host(self.t.out), -1, 0)

    def our_grads(self):
        host = self.kernels.to_host
        dinp = [np.moveaxis(host(self.t.dinp), -1, 0)] if self.t.dinp is not None else []
        return dinp + [host(grad) for grad in self.g.values()]


class LossCase(Side):
    """The softmax cross-entropy's kernels against torch's cross_entropy."""

    def __init__(self, batch, kernels, torch, device):
        rng = np.random.default_rng(SEED)
        self.kernels, self.torch = kernels, torch
        logits = rng.standard_normal((batch, CLASSES)).astype(np.float32)
        labels = rng.integers(0, CLASSES, size=batch).astype(np.int64)
        self.t_inp = torch.from_numpy(logits).to(device).requires_grad_()
        self.t_labels = torch.from_numpy(labels).to(device)
        self.t_out = self.torch_forward()
        self.t_dout = torch.ones((), device=device)
        self.wrt, self.grad_names = [self.t_inp], ["dlogits"]
        self.checked_out, self.checked_wrt = self.t_out, self.wrt
        k = kernels
        self.logits, self.labels = k.to_device(batch_last(logits)), k.to_device(labels)
        self.losses, self.probs, self.dlogits = (k.empty(batch), k.empty(self.logits.shape),
                                                 k.empty(self.logits.shape))

    def forward(self):
        self.kernels.softmax_xent_forward(self.losses, self.probs, self.logits, self.labels,
                                          np.float32(0.0))

    def backward(self):
        self.kernels.softmax_xent_backward(self.dlogits, self.probs, self.labels,
                                           np.float32(1.0), np.float32(0.0))

    def torch_forward(self):
        return self.torch.nn.functional.cross_entropy(self.t_inp, self.t_labels)

    def our_output(self):
        return self.kernels.to_host(self.losses).mean()

    def our_grads(self):
        return [np.moveaxis(self.kernels.to_host(self.dlogits), -1, 0)]


def adam_calls(kernels, torch, device):
    """tinyconv's Adam kernel over LeNet-5's 61,706 parameters against torch.optim.Adam."""
    from tinyconv import LeNet5
    from tinyconv.optim import adam_scalars

    shapes = LeNet5().param_shapes
    count = sum(math.prod(shape) for shape in shapes.values())
    rng = np.random.default_rng(SEED)
    params = rng.standard_normal(count).astype(np.float32)
    grads = rng.standard_normal(count).astype(np.float32)
    m, v = np.zeros_like(params), np.zeros_like(params)
    scalars = adam_scalars(1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    offsets = np.cumsum([0] + [math.prod(s) for s in shapes.values()])
    tensors = [torch.from_numpy(params[a:b].copy()).to(device).requires_grad_()
               for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    for tensor, (a, b) in zip(tensors, zip(offsets[:-1], offsets[1:], strict=True), strict=True):
        tensor.grad = torch.from_numpy(grads[a:b].copy()).to(device)
    opt = torch.optim.Adam(tensors, lr=1e-3)
    params, m, v, grads = (kernels.to_device(a) for a in (params, m, v, grads))
    return (lambda: kernels.adam_update(params, m, v, grads, *scalars)), opt.step, count


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python bench/kernels.py",
        description="Time every op at LeNet-like shapes, forward and backward, tinyconv "
                    "against torch, "
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
    parser.add_argument("--profile", metavar="PATH",
                        help="also profile 10 LeNet-5 training steps of each library on the "
                             "device with torch.profiler (which records numba's kernels too) "
                             "and write its per-kernel table, by device time, to PATH")
    return parser.parse_args(argv)


def profile_steps(path, device, batch, torch):
    """torch.profiler's per-kernel table of 10 Adam steps of LeNet-5 at `batch` in each
    library, after 3 untimed ones, written to path."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from tinyconv import LeNet5, interop
    from tinyconv.optim import Adam

    model = LeNet5(seed=0, device=device)
    opt = Adam(model, lr=1e-3)
    module = interop.torch_module(model.spec()).to(device)
    torch_opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 32, 32)).astype(np.float32)
    y = rng.integers(0, CLASSES, batch)
    t_x, t_y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def ours():
        opt.step(model.loss_and_grads(x, y)[1])

    def theirs():
        torch_opt.zero_grad()
        torch.nn.functional.cross_entropy(module(t_x), t_y).backward()
        torch_opt.step()

    for step in (ours, theirs) * 3:
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for name, step in (("tinyconv step", ours), ("torch step", theirs)):
            for _ in range(10):
                with record_function(name):
                    step()
            if device == "cuda":
                torch.cuda.synchronize()
    sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    Path(path).write_text(prof.key_averages().table(sort_by=sort, row_limit=60) + "\n")
    print(f"torch.profiler's table of 10 training steps each: {path}")


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
    header = make_header("bench/kernels.py: every op at LeNet-like shapes, tinyconv vs torch",
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
    # the registry's cases of LeNet-5's layers that run kernels (tests/registry.py), each at
    # --batch-size; conv1's input is the image, whose gradient nobody needs: in training
    # neither library computes it (case.dinp False: tinyconv passes dinp=None, torch's input
    # does not require grad), and so neither does this. The loss, not a layer, follows them
    cases = {name: (kind, case) for name, (kind, case) in CASES.items()
             if case.lenet and not case.layer.is_view}
    for name, (kind, case) in [*cases.items(), ("xent", (None, None))]:
        input_grad = case is None or case.dinp
        if case is None:
            in_shape, work = (CLASSES,), 0
            timed = LossCase(args.batch_size, kernels, torch, args.device)
        else:
            in_shape = case.shape[1:]
            work = flops(case.layer, in_shape, args.batch_size) / 1e9
            timed = LayerCase(case.layer, in_shape, args.batch_size, kernels, torch,
                              args.device, input_grad, REGISTRY[kind].twin)
        timed.check(name)
        shape = "x".join(map(str, (args.batch_size, *in_shape)))
        for direction, ours, theirs, factor in (
                ("forward", timed.forward, timed.torch_forward, 1),
                ("backward" if input_grad else "backward, no dinp", timed.backward,
                 timed.torch_backward, 2 if input_grad else 1)):
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
    if args.profile:
        profile_steps(args.profile, args.device, args.batch_size, torch)


if __name__ == "__main__":
    main()
