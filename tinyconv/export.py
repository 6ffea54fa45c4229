"""Export a model for other frameworks: python -m tinyconv.export CHECKPOINT --torch/--onnx OUT.

--torch writes a PyTorch state_dict keyed like the original report's module (needs torch);
--onnx writes an ONNX graph built with the onnx package (needs onnx, not torch). CHECKPOINT
is a tinyconv checkpoint, a run directory (its best.npz) or a PyTorch file.
"""

import argparse
import sys

from tinyconv.checkpoint import CheckpointError
from tinyconv.interop import (
    CHECKPOINT_HELP,
    TRUST_PICKLE_HELP,
    MissingDependencyError,
    load_model,
    save_onnx,
    save_torch,
)
from tinyconv.model import PARAM_COUNT, PARAM_SHAPES

# what each preprocessing setting means, written into the ONNX file's metadata
RESIZE_DOC = {"pad": "28x28 zero-padded by 2 to 32x32", "bilinear": "28x28 resized to 32x32, "
              "bilinear (torchvision Resize(32))"}
NORMALIZE_DOC = {"standard": "(x/255 - 0.1307)/0.3081", "unit": "x/255", "none": "x as read"}


def onnx_metadata(header):
    """The ONNX metadata of a run: its epoch and the preprocessing the input expects."""
    if header is None:
        return {"source": "a PyTorch file; preprocessing unknown"}
    config = header["config"]
    resize, normalize = RESIZE_DOC[config["resize"]], NORMALIZE_DOC[config["normalize"]]
    return {"source": "tinyconv", "epoch": str(header["epoch"]), "recipe": config["recipe"],
            "input": f"{resize}; pixels {normalize}"}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tinyconv.export",
        description="Export LeNet-5's weights: a PyTorch state_dict (--torch) with the keys of "
                    "the original report's module, or an ONNX graph (--onnx) that takes "
                    "float32 (N, 1, 32, 32) and returns logits (N, 10) for any batch size N.",
        epilog="Examples:\n"
               "  python -m tinyconv.export runs/NAME/best.npz --torch lenet5.pt\n"
               "  python -m tinyconv.export runs/NAME --onnx lenet5.onnx\n"
               "  python -m tinyconv.export report.pt --trust-pickle --torch plain.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--torch", metavar="OUT.pt", help="write a PyTorch state_dict here "
                        "(needs torch)")
    parser.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX graph here (opset 17; "
                        "needs the onnx package)")
    parser.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    args = parser.parse_args(argv)
    if not (args.torch or args.onnx):
        parser.error("nothing to do: give --torch OUT.pt, --onnx OUT.onnx, or both")
    return args


def main(argv=None):
    args = parse_args(argv)
    target = None  # the file being written, for a write error's message
    try:
        model, header = load_model(args.checkpoint, args.trust_pickle)
        state = model.state_dict()
        size = f"{len(PARAM_SHAPES)} tensors, {PARAM_COUNT:,} float32 parameters"
        if args.torch:
            target = args.torch
            save_torch(target, state)
            print(f"wrote {target}: PyTorch state_dict ({size}); load it with "
                  f"module.load_state_dict(torch.load(PATH, weights_only=True))")
        if args.onnx:
            target = args.onnx
            save_onnx(target, state, onnx_metadata(header))
            print(f"wrote {target}: ONNX graph ({size}), input 'input' (N, 1, 32, 32), "
                  f"output 'logits' (N, 10)")
    except (CheckpointError, MissingDependencyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if target is None:  # not from writing: reading has its own errors above
            raise
        print(f"error: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
