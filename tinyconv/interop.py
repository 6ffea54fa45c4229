"""PyTorch and ONNX interop: torch files in and out, the torch twin of a spec, ONNX graphs.

torch and onnx are optional: each is imported inside the function that needs it, so `import
tinyconv` and training never load them, and a missing one gets a message saying what to
install. Names are torch's (LeNet-5's are the report module's, `backbone.0.weight` ...
`backbone.13.bias`), so a state_dict moves between the two libraries unchanged.
"""

import functools
import importlib
import pickle
import re
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tinyconv.archs import build
from tinyconv.atomicio import atomic_write
from tinyconv.checkpoint import CheckpointError, load_evaluated

# pinned: an unpinned "torch" pulls a multi-GB CUDA build
TORCH_INSTALL = ("pip install torch==2.13.0 (for the CPU-only build add "
                 "--index-url https://download.pytorch.org/whl/cpu)")
ONNX_INSTALL = "pip install onnx (or, in a checkout, pip install -e '.[onnx]')"
# names that a torch.save file gets; any other file is read as a tinyconv .npz checkpoint
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# where checkpoint dicts keep the state_dict: the report ({'epoch', 'model', 'optimizer'}),
# Lightning, and the PyTorch tutorial's {'model_state_dict', 'optimizer_state_dict', ...}
STATE_KEYS = ("model", "state_dict", "model_state_dict")
# the report's transforms (Resize(32), ToTensor), assumed for a torch file that says nothing
TORCH_PREPROCESSING = {"resize": "bilinear", "normalize": "unit"}
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # the IR of opset 17; onnxruntime 1.12 and later run it
# the --help of the tools' CHECKPOINT argument (what load_model reads) and of --trust-pickle
CHECKPOINT_HELP = ("a .npz checkpoint written by python -m tinyconv.train, a run directory (its "
                   "best.npz), or a PyTorch file (.pt, .pth: a state_dict or a checkpoint dict "
                   "holding one)")
TRUST_PICKLE_HELP = ("let a PyTorch file unpickle Python objects (a whole saved module, as the "
                     "report's LeNet5.pt); this can run arbitrary code, so only for files from a "
                     "trusted source")


class MissingDependencyError(RuntimeError):
    """An optional package (torch, onnx) that the requested conversion needs is not installed."""


def _require(name, purpose, install):
    """Import an optional package, or raise MissingDependencyError saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingDependencyError(f"{purpose} needs the '{name}' package, which cannot be "
                                     f"imported ({exc}); install it with: {install}") from None


# ---- reading PyTorch files


def is_torch_file(path):
    """Whether path is (or, by its suffix, should be) a torch.save file rather than an .npz."""
    path = Path(path)
    if path.suffix in TORCH_SUFFIXES:
        return True
    try:
        with zipfile.ZipFile(path) as archive:  # torch.save's zip holds <name>/data.pkl
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        pass
    try:
        with open(path, "rb") as file:  # torch's legacy format: a bare pickle stream
            return file.read(1) == b"\x80"
    except OSError:
        return False


def _lenient_pickle(torch):
    """A pickle module for torch.load that stands in a bare nn.Module for missing classes.

    A pickled module names its class (the report's is `__main__.LeNet5`, defined in a
    notebook), which cannot be imported here. The stand-in receives the module's attributes
    (its parameters and submodules) and never runs: only its state_dict() is read.
    """
    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                return type(name, (torch.nn.Module,), {"__module__": module})

    return types.SimpleNamespace(__name__="pickle", Unpickler=Unpickler, load=pickle.load)


def _describe(content):
    """A short account of what a torch file held, for error messages."""
    if isinstance(content, Mapping):
        return f"a {type(content).__name__} with keys {list(content)[:8]}"
    return f"a {type(content).__module__}.{type(content).__name__}"


def _find_state_dict(torch, content, path):
    """The {name: tensor} mapping inside what torch.load returned, or CheckpointError."""
    if isinstance(content, torch.nn.Module):
        return content.state_dict()
    if isinstance(content, Mapping):
        if content and all(isinstance(value, torch.Tensor) for value in content.values()):
            return content
        for key in STATE_KEYS:
            if key in content:
                return _find_state_dict(torch, content[key], path)
    raise CheckpointError(f"{path}: expected a state_dict of the network's tensors, a checkpoint "
                          f"dict holding one under {' or '.join(map(repr, STATE_KEYS))}, or "
                          f"(with --trust-pickle) a pickled module; found {_describe(content)}")


def _strip_prefix(state, anchor):
    """The state without a prefix that every key shares (DataParallel's 'module.', ...), found
    from the key that ends with anchor, the model's first name (backbone.0.weight)."""
    prefixes = {name[:-len(anchor)] for name in state if name.endswith(anchor)}
    if len(prefixes) != 1:
        return state
    prefix = prefixes.pop()
    if not all(name.startswith(prefix) for name in state):
        return state
    return {name[len(prefix):]: value for name, value in state.items()}


def _load_error(exc):
    """The telling part of a torch.load error: the weights-only reader's cause, or line one."""
    text = str(exc)
    cause = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(Check the documentation|\Z)", text,
                      re.DOTALL)
    lines = (cause.group(1) if cause else text).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def read_torch_state(path, trust_pickle=False, anchor="backbone.0.weight"):
    """A network's state ({name: array}, floats as float32) from a file written by torch.save.

    Reads a state_dict, a checkpoint dict holding one (the report's {'epoch', 'model',
    'optimizer'}), and, only with trust_pickle, pickled modules; half precision becomes
    float32. The file is read with weights_only=True unless trust_pickle is set.
    """
    torch = _require("torch", "reading a PyTorch file", TORCH_INSTALL)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such PyTorch file")
    try:
        if trust_pickle:
            content = torch.load(path, map_location="cpu", weights_only=False,
                                 pickle_module=_lenient_pickle(torch))
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ... from torch.load
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        if found and not trust_pickle:
            raise CheckpointError(
                f"{path}: refused: the file pickles Python objects, not only tensors (the first "
                f"is {found.group(1)}; the report saved its whole module this way), and "
                f"unpickling them can run arbitrary code. If you trust where the file came "
                f"from, pass --trust-pickle (trust_pickle=True in Python); better, re-save it "
                f"as a plain state_dict: torch.save(model.state_dict(), PATH)") from None
        raise CheckpointError(f"{path}: unreadable PyTorch file, expected a file written by "
                              f"torch.save ({_load_error(exc)})") from None
    state = {}
    for name, value in _strip_prefix(_find_state_dict(torch, content, path), anchor).items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {name} must be a tensor, found "
                                  f"{type(value).__name__}")
        value = value.detach().cpu()
        state[name] = (value.float() if value.is_floating_point() else value).numpy()
    return state


def load_torch_into(model, path, trust_pickle=False):
    """Copy a PyTorch file's weights into a Sequential and return it; errors name the file."""
    state = read_torch_state(path, trust_pickle, anchor=next(iter(model.param_shapes), ""))
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model


def load_model(path, trust_pickle=False, device="cpu", arch="lenet5"):
    """(Sequential, run header) from a tinyconv checkpoint or run directory, on `device`; for a
    torch file, which records no architecture, the network `arch` (a name or a spec) with its
    weights and header None. A directory means its best.npz."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.npz"
    if is_torch_file(path):
        return load_torch_into(build(arch, device=device), path, trust_pickle), None
    return load_evaluated(path, device)


def load(path, device="cpu", trust_pickle=False, arch="lenet5"):
    """The network of a tinyconv checkpoint, a run directory (its best.npz) or a torch file
    (a state_dict of the network `arch`, LeNet-5 unless told), on `device`."""
    return load_model(path, trust_pickle, device, arch)[0]


# ---- torch twins


def torch_layer(spec):
    """The torch.nn module a layer spec describes: its kind is torch.nn's class name and its
    arguments are that class's, so the twin exists by construction; a Residual, which
    torch.nn lacks, is a module holding its body as a torch.nn.Sequential named body."""
    from tinyconv.nn import layer_from_spec

    torch = _require("torch", "building a torch twin", TORCH_INSTALL)
    layer_from_spec(spec)  # a kind and arguments of tinyconv's, or a ValueError saying why
    if spec["kind"] == "Residual":
        return _torch_residual(torch)(*(torch_layer(layer) for layer in spec["body"]))
    arguments = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()
                 if k != "kind"}
    return getattr(torch.nn, spec["kind"])(**arguments)


@functools.cache
def _torch_residual(torch):
    """The torch twin of nn.Residual: y = x + body(x)."""

    class Residual(torch.nn.Module):
        def __init__(self, *body):
            super().__init__()
            self.body = torch.nn.Sequential(*body)

        def forward(self, x):
            return x + self.body(x)

    return Residual


def torch_module(spec):
    """The torch.nn module of a Sequential's spec, with the same state_dict names: a
    torch.nn.Sequential, inside attributes named by the prefix (LeNet-5's 'backbone.')."""
    torch = _require("torch", "building a torch twin", TORCH_INSTALL)

    class Wrapped(torch.nn.Module):
        """A module holding one submodule under `name`, its forward the submodule's."""

        def __init__(self, name, inner):
            super().__init__()
            self.inner_name = name
            self.add_module(name, inner)

        def forward(self, x):
            return getattr(self, self.inner_name)(x)

    module = torch.nn.Sequential(*(torch_layer(layer) for layer in spec["layers"]))
    for name in reversed([part for part in spec.get("prefix", "").split(".") if part]):
        module = Wrapped(name, module)
    return module


# ---- writing


def save_torch(path, state):
    """Write a {name: array} state as a torch state_dict file (float32 tensors), atomically."""
    torch = _require("torch", "exporting to PyTorch", TORCH_INSTALL)
    tensors = {name: torch.from_numpy(np.ascontiguousarray(
        value, np.float32 if value.dtype.kind == "f" else value.dtype))
        for name, value in state.items()}
    atomic_write(path, lambda file: torch.save(tensors, file))


def onnx_model(model, metadata=None):
    """A Sequential as an ONNX ModelProto: input (N, *input_shape) float32 -> output (N, ...),
    N dynamic; the nodes are the layers' own, the initializers its state_dict."""
    onnx = _require("onnx", "exporting to ONNX", ONNX_INSTALL)
    from onnx import TensorProto, helper, numpy_helper
    state = model.state_dict()
    nodes, current, last = [], "input", len(model.layers) - 1
    for index, layer in enumerate(model.layers):
        name = f"{model.prefix}{index}"
        output = "logits" if index == last else name
        # its parameters and buffers: local name (weight) -> initializer (backbone.0.weight)
        names = {full[len(name) + 1:]: full for full in state if full.startswith(f"{name}.")}
        for node in layer.onnx(helper.make_node, current, output, names):
            node.name = node.name or name
            nodes.append(node)
        current = output
    initializers = [numpy_helper.from_array(value, name) for name, value in state.items()]
    graph = helper.make_graph(
        nodes, model.name or "tinyconv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *model.input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", *model.output_shape])],
        initializers)
    proto = helper.make_model(graph, producer_name="tinyconv", ir_version=ONNX_IR_VERSION,
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    helper.set_model_props(proto, metadata or {})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_onnx(path, model, metadata=None):
    """Write a Sequential as an ONNX file, atomically."""
    proto = onnx_model(model, metadata)
    atomic_write(path, lambda file: file.write(proto.SerializeToString()))
