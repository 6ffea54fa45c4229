"""PyTorch and ONNX interop: export, import (state_dicts, the report's checkpoints), errors."""

import json
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import tinyconv
from tinyconv import LeNet5, evaluate, export, predict, train, visualize
from tinyconv.archs import ARCHS
from tinyconv.checkpoint import CheckpointError, load_run, save_run
from tinyconv.data import iterate_batches, load_mnist
from tinyconv.interop import load, torch_module
from tinyconv.nn import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    Sequential,
    Tanh,
)
from tinyconv.optim import Adam, StepLR

from .torch_lenet import LeNet5 as TorchLeNet5
from .torch_lenet import torch_copy

ROOT = Path(__file__).resolve().parent.parent
# float32 with different summation orders (tinyconv's kernels, torch's, onnxruntime's)
LOGITS_RTOL = 1e-5


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """A briefly trained run (200 Adam steps, about 97% test accuracy) and the test images."""
    run_dir = tmp_path_factory.mktemp("interop") / "run"
    assert train.main(["--recipe", "plain",
                       "--limit-train", "12800", "--limit-test", "500", "--batch-size", "64",
                       "--epochs", "1", "--quiet", "--run-dir", str(run_dir)]) == 0
    model, _, _, header, _ = load_run(run_dir / "best.npz")
    images, labels = load_mnist("test")
    config = header["config"]
    x, y = next(iterate_batches(images, labels, len(labels), shuffle=False,
                                resize=config["resize"], normalize=config["normalize"]))
    logits = model.forward(x)
    assert np.mean(logits.argmax(1) == y) > 0.9  # trained: predictions are not near-ties
    return {"dir": run_dir, "model": model, "x": x, "logits": logits}


@pytest.fixture(scope="session")
def torch_file(run):
    """The run's weights as a plain torch state_dict file."""
    path = run["dir"].parent / "plain.pt"
    torch.save(torch_copy(run["model"]).state_dict(), path)
    return path


def assert_logits_match(found, expected):
    relative = np.abs(found - expected).max() / np.abs(expected).max()
    assert relative < LOGITS_RTOL, f"max |diff| / max |logit| = {relative:.2e}"
    assert np.array_equal(found.argmax(1), expected.argmax(1))


def assert_params(model, expected):
    for name, value in expected.items():
        assert model.params[name].dtype == np.float32
        assert np.array_equal(model.params[name], value), name


def halved(model):
    """The parameters rounded to float16 and back, as the report's model.half() saw them."""
    return {name: value.astype(np.float16).astype(np.float32)
            for name, value in model.state_dict().items()}


# ---- export


def test_torch_export_matches_on_all_test_images(run, tmp_path, capsys):
    out = tmp_path / "lenet5.pt"
    assert export.main([str(run["dir"]), "--torch", str(out)]) == 0
    assert "10 tensors, 61,706 float32 parameters" in capsys.readouterr().out
    shapes = LeNet5().param_shapes
    state = torch.load(out, weights_only=True)
    assert list(state) == list(shapes)
    assert all(state[k].dtype == torch.float32 and state[k].shape == s
               for k, s in shapes.items())
    module = TorchLeNet5()
    module.load_state_dict(state)  # strict: exactly the report module's keys and shapes
    with torch.no_grad():
        logits = module(torch.from_numpy(run["x"])).numpy()
    assert_logits_match(logits, run["logits"])
    assert_params(load(out), run["model"].state_dict())  # and back, bit for bit
    assert not list(tmp_path.glob(".*tmp"))


def test_onnx_export_runs_in_onnxruntime(run, tmp_path, capsys):
    out = tmp_path / "lenet5.onnx"
    assert export.main([str(run["dir"] / "best.npz"), "--onnx", str(out)]) == 0
    assert capsys.readouterr().out == (f"wrote {out}: ONNX graph (10 tensors, 61,706 float32 "
                                       "parameters), input 'input' (N, 1, 32, 32), output "
                                       "'logits' (N, 10)\n")
    graph = onnx.load(out)
    onnx.checker.check_model(graph, full_check=True)
    assert {node.op_type for node in graph.graph.node} == {
        "Conv", "Tanh", "AveragePool", "Flatten", "Gemm"}
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["input"] == ("28x28 digits to 32x32 by zero padding by 2 (LeNet's own); "
                              "pixels (x/255 - 0.1307)/0.3081")
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": run["x"][:1000]})
    assert_logits_match(logits, run["logits"][:1000])
    (one,) = session.run(["logits"], {"input": run["x"][5:6]})  # the batch size is dynamic
    assert one.shape == (1, 10) and one.argmax() == run["logits"][5].argmax()


def test_onnx_export_never_imports_torch(run, tmp_path):
    code = ("import sys; from tinyconv import export; "
            f"assert export.main([{str(run['dir'])!r}, '--onnx', {str(tmp_path / 'm.onnx')!r}])"
            " == 0; assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("package, flag, install", [
    ("torch", "--torch", "pip install torch==2.13.0"),
    ("onnx", "--onnx", "pip install onnx"),
])
def test_missing_package_gets_install_message(run, tmp_path, capsys, monkeypatch, package,
                                              flag, install):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were absent
    assert export.main([str(run["dir"]), flag, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"needs the '{package}' package" in err and install in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--torch", "--onnx"])
@pytest.mark.parametrize("blocker, out, reason", [
    ("directory", "in-the-way/", "Is a directory"),  # --torch DIR/
    ("file", "in-the-way/out", "File exists"),  # a file where the directory should be
    ("file", "in-the-way/sub/out", "Not a directory"),  # a file above it
])
def test_unwritable_export_gets_one_line_and_status_2(run, tmp_path, capsys, flag, blocker, out,
                                                      reason):
    in_the_way = tmp_path / "in-the-way"
    if blocker == "directory":
        in_the_way.mkdir()
    else:
        in_the_way.write_text("a regular file\n")
    out = f"{tmp_path}/{out}"
    assert export.main([str(run["dir"]), flag, out]) == 2
    assert capsys.readouterr().err == f"error: cannot write {out}: {reason}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["in-the-way"]  # no temporary left behind


def test_export_needs_a_target(run, capsys):
    assert export.main([str(run["dir"])]) == 2
    assert capsys.readouterr().err == ("error: nothing to do: give --torch OUT.pt, --onnx "
                                       "OUT.onnx, or both\n")


@pytest.fixture(scope="session")
def custom(tmp_path_factory):
    """A small network that is not LeNet-5 (its own input shape, a 3x5 kernel, 7 outputs, a
    prefix), saved as a run checkpoint, and a batch of inputs with its logits."""
    model = Sequential(Conv2d(2, 4, (3, 5)), Tanh(), AvgPool2d(2), Flatten(), Linear(120, 7),
                       input_shape=(2, 12, 16), seed=4, prefix="net.", name="tiny")
    opt = Adam(model)
    path = tmp_path_factory.mktemp("custom") / "tiny.npz"
    config = {"seed": 4, "lr_step": 1, "lr_gamma": 0.5, "recipe": "custom", "resize": "pad",
              "normalize": "standard"}
    save_run(path, model, opt, StepLR(opt, 1, 0.5), {"epoch": 3, "config": config})
    x = np.random.default_rng(5).standard_normal((9, 2, 12, 16)).astype(np.float32)
    return {"path": path, "model": model, "x": x, "logits": model.forward(x)}


def test_any_network_exports_to_onnx_and_torch_with_its_own_logits(custom, tmp_path, capsys):
    onnx_path, torch_path = tmp_path / "tiny.onnx", tmp_path / "tiny.pt"
    assert export.main([str(custom["path"]), "--onnx", str(onnx_path), "--torch",
                        str(torch_path)]) == 0
    size = "4 tensors, 971 float32 parameters"
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {torch_path}: PyTorch state_dict ({size}); load it with "
        "module.load_state_dict(torch.load(PATH, weights_only=True))",
        f"wrote {onnx_path}: ONNX graph ({size}), input 'input' (N, 2, 12, 16), output "
        "'logits' (N, 7)"]
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": custom["x"]})
    assert_logits_match(logits, custom["logits"])
    module = torch_module(custom["model"].spec())
    module.load_state_dict(torch.load(torch_path, weights_only=True))  # strict: the same keys
    with torch.no_grad():
        logits = module(torch.from_numpy(custom["x"])).numpy()
    assert_logits_match(logits, custom["logits"])


def test_a_blocks_network_exports_with_its_running_statistics(tmp_path, capsys):
    # padded convs, batch norm (its running statistics moved by two steps), a residual block
    # and dropout: ONNX and torch give tinyconv's eval-mode logits
    model = Sequential(Conv2d(1, 3, 3, padding=1), BatchNorm2d(3), ReLU(),
                       Residual(Conv2d(3, 3, 3, padding=1), ReLU(), BatchNorm2d(3)),
                       MaxPool2d(2), Flatten(), Linear(48, 6), BatchNorm1d(6), Dropout(0.3),
                       Linear(6, 4), input_shape=(1, 8, 8), seed=3)
    opt = Adam(model, lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
        opt.step(model.loss_and_grads(x, rng.integers(0, 4, 16))[1])
    path = tmp_path / "blocks.npz"
    config = {"seed": 3, "lr_step": 1, "lr_gamma": 0.5, "resize": "pad", "normalize": "unit"}
    save_run(path, model, opt, StepLR(opt, 1, 0.5), {"epoch": 1, "config": config})
    x = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    expected = model.eval().forward(x)
    onnx_path, torch_path = tmp_path / "blocks.onnx", tmp_path / "blocks.pt"
    assert export.main([str(path), "--onnx", str(onnx_path), "--torch", str(torch_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    assert_logits_match(session.run(["logits"], {"input": x})[0], expected)
    module = torch_module(model.spec())
    state = torch.load(torch_path, weights_only=True)
    assert state["1.num_batches_tracked"].dtype == torch.int64
    assert state["1.num_batches_tracked"].item() == 2
    module.load_state_dict(state)  # strict: the same keys, buffers included
    with torch.no_grad():
        assert_logits_match(module.eval()(torch.from_numpy(x)).numpy(), expected)


def test_torch_twin_of_lenet5_is_the_report_module(run):
    twin, report = torch_module(ARCHS["lenet5"]), TorchLeNet5()
    assert {k: v.shape for k, v in twin.state_dict().items()} == \
        {k: v.shape for k, v in report.state_dict().items()}
    assert list(twin.state_dict()) == list(report.state_dict())  # in the same order too
    twin.load_state_dict(torch_copy(run["model"]).state_dict())
    x = torch.from_numpy(run["x"][:500])
    with torch.no_grad():
        assert torch.equal(twin(x), torch_copy(run["model"])(x))


def test_load_reads_a_checkpoint_a_run_directory_and_a_torch_file(run, torch_file):
    expected = run["model"].state_dict()
    for path in (run["dir"] / "best.npz", run["dir"], torch_file):
        assert_params(tinyconv.load(path), expected)


# ---- import


def test_report_checkpoint_layout_in_half_precision(run, tmp_path):
    # {'epoch', 'model', 'optimizer'} with a half-precision state_dict under 'model'
    module = torch_copy(run["model"])
    path = tmp_path / "report.pt"
    torch.save({"epoch": 299, "model": deepcopy(module).half().state_dict(),
                "optimizer": torch.optim.Adam(module.parameters()).state_dict()}, path)
    assert_params(load(path), halved(run["model"]))


def test_data_parallel_prefix_is_stripped(run, tmp_path):
    path = tmp_path / "dp.pt"
    state = torch_copy(run["model"]).state_dict()
    torch.save({"module." + name: value for name, value in state.items()}, path)
    assert_params(load(path), run["model"].state_dict())


@pytest.fixture(scope="session")
def pickled_report(run, torch_file):
    """The report's own checkpoint: the whole module, half, its class in a notebook's __main__."""
    path = run["dir"].parent / "LeNet5.pt"
    script = f"""
import sys
from copy import deepcopy
import torch
sys.path.insert(0, {str(ROOT)!r})
from tests.torch_lenet import LeNet5 as Module
class LeNet5(Module):  # the class lives in __main__, as in the report's notebook
    pass
train_model = LeNet5()
train_model.load_state_dict(torch.load({str(torch_file)!r}, weights_only=True))
optimizer = torch.optim.Adam(train_model.parameters(), lr=1e-5)
ckpt = {{'epoch': 299, 'model': deepcopy(train_model).half(), 'optimizer': optimizer.state_dict()}}
torch.save(ckpt, {str(path)!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    return path


def test_pickled_module_is_refused_unless_trusted(run, pickled_report):
    with pytest.raises(CheckpointError) as refusal:
        load(pickled_report)
    message = str(refusal.value)
    assert message.startswith(f"{pickled_report}: refused")
    for words in ("__main__.LeNet5", "arbitrary code", "--trust-pickle"):
        assert words in message
    assert_params(load(pickled_report, trust_pickle=True), halved(run["model"]))


def test_evaluate_reads_torch_files(run, torch_file, pickled_report, capsys):
    def report(*argv):
        assert evaluate.main([*argv, "--limit", "500", "--json"]) == 0
        out, err = capsys.readouterr()
        return json.loads(out), err

    expected = report(str(run["dir"] / "best.npz"))[0]["accuracy"]
    found, err = report(str(torch_file), "--resize", "pad", "--normalize", "standard")
    assert found["accuracy"] == expected and found["epoch"] is None and not err
    found, err = report(str(torch_file))
    assert found["resize"] == "bilinear" and found["normalize"] == "unit"  # the report's
    assert err == ("note: a PyTorch file records no preprocessing; using --resize bilinear "
                   "--normalize unit (the report's where not given)\n")
    assert evaluate.main([str(pickled_report)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {pickled_report}: refused") and "Traceback" not in err
    found, _ = report(str(pickled_report), "--trust-pickle", "--resize", "pad",
                      "--normalize", "standard")
    assert found["accuracy"] > 0.9


def test_train_init_from_a_torch_file(run, torch_file, pickled_report, tmp_path, capsys):
    # lr 1e-30: the one Adam step leaves every weight as loaded
    flags = ["--recipe", "plain", "--limit-train", "64", "--limit-test", "64", "--batch-size",
             "64", "--epochs", "1",
             "--lr", "1e-30", "--quiet"]
    assert train.main([*flags, "--init-from", str(torch_file), "--run-dir",
                       str(tmp_path / "a")]) == 0
    model, _, _, header, _ = load_run(tmp_path / "a" / "last.npz")
    assert header["config"]["init_from"] == str(torch_file)
    assert_params(model, run["model"].state_dict())
    assert train.main([*flags, "--init-from", str(pickled_report), "--run-dir",
                       str(tmp_path / "b")]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_train_init_from_any_network_trains_that_network(tmp_path):
    model = Sequential(Conv2d(1, 3, 5), Tanh(), AvgPool2d(4), Flatten(), Linear(147, 10),
                       input_shape=(1, 32, 32), seed=2)
    opt = Adam(model)
    config = {"seed": 2, "lr_step": 1, "lr_gamma": 0.5}
    save_run(tmp_path / "small.npz", model, opt, StepLR(opt, 1), {"epoch": 1, "config": config})
    assert train.main(["--recipe", "plain",
                       "--limit-train", "64", "--limit-test", "64", "--epochs", "1", "--quiet",
                       "--init-from", str(tmp_path / "small.npz"), "--run-dir",
                       str(tmp_path / "run")]) == 0
    trained = load(tmp_path / "run")
    assert trained.spec() == model.spec()
    assert not np.array_equal(trained.state_dict()["0.weight"], model.state_dict()["0.weight"])


def test_predict_and_visualize_read_the_pickled_report_only_if_trusted(pickled_report,
                                                                       test_image, tmp_path,
                                                                       capsys):
    for command, argv in ((predict, [str(test_image)]),
                          (visualize, ["--out", str(tmp_path / "out")])):
        assert command.main([str(pickled_report), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {pickled_report}: refused") and err.count("\n") == 1
        assert command.main([str(pickled_report), *argv, "--trust-pickle"]) == 0
        captured = capsys.readouterr()
        assert captured.err.startswith("note: a PyTorch file records no preprocessing")
    assert captured.out.count("wrote") == 2


@pytest.fixture
def test_image(tmp_path):
    path = tmp_path / "digit.png"
    pytest.importorskip("PIL").Image.fromarray(load_mnist("test")[0][0]).save(path)
    return path


def mutate(state, change):
    state = dict(state)
    if change == "missing":
        del state["backbone.4.bias"]
    elif change == "unexpected":
        state["backbone.14.weight"] = torch.zeros(3)
    elif change == "shape":
        state["backbone.0.weight"] = torch.zeros(6, 1, 3, 3)
    elif change == "integer":
        state["backbone.13.bias"] = torch.zeros(10, dtype=torch.int64)
    elif change == "nested":
        state = {"epoch": 1, "weights": state}
    return state


@pytest.mark.parametrize("change, message", [
    ("missing", "missing ['backbone.4.bias'], unexpected []"),
    ("unexpected", "missing [], unexpected ['backbone.14.weight']"),
    ("shape", "backbone.0.weight must have shape (6, 1, 5, 5), found (6, 1, 3, 3)"),
    ("integer", "backbone.13.bias must hold floats, found int64"),
    ("nested", "expected a state_dict of the network's tensors, a checkpoint dict holding one "
               "under 'model' or 'state_dict' or 'model_state_dict', or (with --trust-pickle) "
               "a pickled module; found a dict with keys ['epoch', 'weights']"),
])
def test_wrong_keys_and_shapes_are_named(run, tmp_path, change, message):
    path = tmp_path / "bad.pt"
    torch.save(mutate(torch_copy(run["model"]).state_dict(), change), path)
    with pytest.raises(CheckpointError) as error:
        load(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


@pytest.mark.parametrize("damage, message", [
    ("missing", "no such PyTorch file"),
    ("truncated", "unreadable PyTorch file, expected a file written by torch.save"),
    ("text", "unreadable PyTorch file"),
])
def test_damaged_torch_files_get_a_clear_error(torch_file, tmp_path, capsys, damage, message):
    path = tmp_path / "model.pt"
    content = {"truncated": torch_file.read_bytes()[:3000], "text": b"not a model\n"}
    if damage in content:
        path.write_bytes(content[damage])
    assert export.main([str(path), "--onnx", str(tmp_path / "out.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("recipe", ["plain", "default"])  # default: model/ is the average
def test_torch_recounts_a_runs_test_accuracy(tmp_path, capsys, recipe):
    from bench import torch_check

    run = tmp_path / "run"
    assert train.main(["--recipe", recipe, "--limit-train", "1280", "--epochs", "1", "--quiet",
                       "--run-dir", str(run)]) == 0
    claimed = json.loads((run / "metrics.jsonl").read_text())["test_accuracy"]
    assert torch_check.main([str(run), "--json", str(tmp_path / "check.json")]) == 0
    (row,) = json.loads((tmp_path / "check.json").read_text())["rows"]
    assert row["float32"] == row["float64"] == round(claimed * 10000)
    assert row["ema"] == (recipe == "default")
    # a checkpoint whose weights torch counts differently fails the check
    arrays, header = tinyconv.checkpoint.load(run / "last.npz")
    arrays["model/backbone.13.bias"] = arrays["model/backbone.13.bias"] + np.float32(
        np.arange(10) * 3)
    tinyconv.checkpoint.save(run / "last.npz", arrays, header)
    assert torch_check.main([str(run)]) == 1
