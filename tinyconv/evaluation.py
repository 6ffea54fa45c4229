"""A trained classifier on MNIST-like digits: loaded with its preprocessing, fed, evaluated.

The library half of python -m tinyconv.evaluate and predict: a checkpoint's network and the
preprocessing its training used (load_classifier), network inputs made from uint8 digits as
the training batches were (model_inputs), and the accuracy, loss and confusion matrix of a
network on labelled digits (evaluate).
"""

import numpy as np

from tinyconv.checkpoint import CheckpointError
from tinyconv.data import INPUT_SIZE, NUM_CLASSES, iterate_batches, prepare_batch
from tinyconv.interop import TORCH_PREPROCESSING, load_model

# what data.py's batches are: one grey channel of 32x32
MNIST_INPUT = (1, INPUT_SIZE, INPUT_SIZE)
# the evaluate command's batches: a quarter of 1000's activations, no slower per image
# (README, "Memory")
BATCH_SIZE = 250


def preprocessing(header, source):
    """{"resize", "normalize"} of a run header: its training's; the report's for None (a
    PyTorch file, which records none). A header without them is a CheckpointError naming
    source."""
    config = TORCH_PREPROCESSING if header is None else header["config"]
    missing = [key for key in ("resize", "normalize") if key not in config]
    if missing:
        raise CheckpointError(f"{source}: incomplete tinyconv checkpoint, its config records "
                              f"no {' or '.join(missing)} (the preprocessing of its training)")
    return {key: config[key] for key in ("resize", "normalize")}


def check_classifier(model, source, labelled=False):
    """The model in eval mode, once checked to take MNIST batches and give a score per class,
    and, when it is to meet MNIST's labels (labelled: evaluate, train), one for each of the
    10 digits; a ValueError naming source otherwise."""
    if model.input_shape != MNIST_INPUT or len(model.output_shape) != 1:
        raise ValueError(f"{source}: expected a network from digits {batch_shape(MNIST_INPUT)}"
                         f" to class scores (N, classes), found one from "
                         f"{batch_shape(model.input_shape)} to {batch_shape(model.output_shape)}")
    if labelled and model.output_shape[0] < NUM_CLASSES:
        raise ValueError(f"{source}: MNIST's labels need {NUM_CLASSES} class scores, the "
                         f"network gives {model.output_shape[0]}")
    return model.eval()


def batch_shape(shape):
    """A batch-less shape as a batch's: (1, 32, 32) -> '(N, 1, 32, 32)'."""
    return f"(N, {', '.join(map(str, shape))})"


def load_classifier(path, device="cpu", trust_pickle=False, arch="lenet5"):
    """(model in eval mode, {"resize", "normalize"}) of a checkpoint, a run directory (its
    best.npz) or a PyTorch file (the network `arch`; it records no preprocessing, so the
    report's, TORCH_PREPROCESSING, is assumed)."""
    model, header = load_model(path, trust_pickle, device, arch)
    return check_classifier(model, path), preprocessing(header, path)


def model_inputs(digits, config):
    """Float32 (N, 1, 32, 32) network inputs of uint8 (N, 28, 28) digits, made as the training
    batches were (config's resize and normalize), without augmentation."""
    return prepare_batch(np.asarray(digits, np.uint8), None, config["resize"], False, 0,
                         config["normalize"])


def evaluate(model, images, labels, resize, normalize, batch_size=BATCH_SIZE, after_batch=None):
    """Mean loss, accuracy, predictions and confusion matrix (true x predicted, the model's
    classes) of a model on uint8 (N, 28, 28) images and their labels.

    The model runs in eval mode (batch norm's running statistics, no dropout), and returns to
    the mode it was in. after_batch, if given, is called after each batch (the evaluate command
    cancels its compile notice with it).
    """
    classes = model.output_shape[0]
    predictions = np.empty(len(labels), np.int64)
    loss_sum, start = 0.0, 0
    batches = iterate_batches(images, labels, batch_size, shuffle=False, resize=resize,
                              normalize=normalize)
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            loss, logits = model.loss(x, y)
            if after_batch is not None:
                after_batch()
            loss_sum += loss * len(y)
            predictions[start:start + len(y)] = logits.argmax(axis=1)
            start += len(y)
    finally:
        model.train(was_training)
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return {"loss": loss_sum / len(labels), "accuracy": float(np.mean(predictions == labels)),
            "predictions": predictions, "confusion": confusion}


def per_class_accuracy(confusion):
    """Fraction of each true class predicted correctly (NaN for a class with no samples)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(confusion) / confusion.sum(axis=1)
