"""Export a model for other frameworks: python -m tinyconv.export CHECKPOINT --torch/--onnx OUT.

--torch writes a PyTorch state_dict with torch's names (LeNet-5's are the original report
module's; needs torch); --onnx writes an ONNX graph built with the onnx package (needs onnx,
not torch). CHECKPOINT is a tinyconv checkpoint, a run directory (its best.npz) or a PyTorch
file.
"""

import sys

from tinyconv import cli
from tinyconv.evaluation import batch_shape
from tinyconv.interop import load_model, save_onnx, save_torch


def onnx_metadata(header):
    """The ONNX metadata of a run: its epoch and the preprocessing the input expects."""
    if header is None:
        return {"source": "a PyTorch file; preprocessing unknown"}
    config = header["config"]
    metadata = {"source": "tinyconv", "epoch": str(header.get("epoch", "unknown")),
                "recipe": str(config.get("recipe", "unknown"))}
    if config.get("resize") in cli.RESIZE_MEANING and \
            config.get("normalize") in cli.NORMALIZE_MEANING:
        resize = cli.RESIZE_MEANING[config["resize"]]
        normalize = cli.NORMALIZE_MEANING[config["normalize"]]
        metadata["input"] = f"28x28 digits to 32x32 by {resize}; pixels {normalize}"
    else:
        metadata["input"] = "preprocessing unknown (the run recorded none)"
    return metadata


def parser():
    parser = cli.parser(
        "python -m tinyconv.export",
        "Export a checkpoint's network: a PyTorch state_dict (--torch) with torch's names "
        "(LeNet-5's are those of the original report's module), or an ONNX graph (--onnx) "
        "that takes float32 inputs (N, ...) and returns the last layer's output (N, ...) for "
        "any batch size N; the shapes are printed.",
        examples=["python -m tinyconv.export runs/NAME/best.npz --torch lenet5.pt",
                  "python -m tinyconv.export runs/NAME --onnx lenet5.onnx",
                  "python -m tinyconv.export report.pt --trust-pickle --torch plain.pt"])
    cli.add_checkpoint(parser)
    parser.add_argument("--torch", metavar="OUT.pt", help="write a PyTorch state_dict here "
                        "(needs torch)")
    parser.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX graph here (opset 17; "
                        "needs the onnx package)")
    cli.add_trust_pickle(parser)
    return parser


def command(args):
    if not (args.torch or args.onnx):
        raise cli.UsageError("nothing to do: give --torch OUT.pt, --onnx OUT.onnx, or both")
    # on the CPU: exporting copies the weights out, it runs no kernel
    model, header = load_model(args.checkpoint, args.trust_pickle, "cpu")
    state = model.state_dict()
    size = f"{len(state)} tensors, {model.param_count:,} float32 parameters"
    if args.torch:
        with cli.writing(args.torch):
            save_torch(args.torch, state)
        print(f"wrote {args.torch}: PyTorch state_dict ({size}); load it with "
              f"module.load_state_dict(torch.load(PATH, weights_only=True))")
    if args.onnx:
        with cli.writing(args.onnx):
            save_onnx(args.onnx, model, onnx_metadata(header))
        print(f"wrote {args.onnx}: ONNX graph ({size}), input 'input' "
              f"{batch_shape(model.input_shape)}, output 'logits' "
              f"{batch_shape(model.output_shape)}")


def main(argv=None):
    return cli.run(parser(), command, argv, kernels=False)  # it runs none


if __name__ == "__main__":
    sys.exit(main())
