"""Pictures: training curves, confusion matrix, mistakes, conv1 filters, feature maps.

matplotlib is optional (pip install 'tinyconv[pictures]') and imported only when a picture is
drawn. Figures are matplotlib.figure.Figure objects rendered by Agg straight to PNG: no pyplot,
no display, no change to the caller's backend. Every PNG is written atomically (a temporary
file, then a rename), and its size in pixels is its figure size in inches times DPI.
"""

import gc
import json
import sys

import numpy as np

from tinyconv.atomicio import atomic_write

DPI = 100
INCHES = {"curves": (9.0, 3.4), "confusion": (6.2, 5.2), "filters": (7.0, 1.9),
          "feature_maps": (9.0, 8.4)}
FEATURE_ROW_HEIGHTS = (1.1, 1.3, 1.1, 1.2, 1.0, 0.8, 0.8, 0.9)  # input, 6 stages, probabilities
MISTAKE_COLUMNS = 10
MISTAKE_CELL = (0.85, 1.0)   # inches per digit of the mistakes grid
MISTAKE_HEADER = 0.45        # inches for its title
MAX_MISTAKES = 40
INSTALL_HINT = "pip install 'tinyconv[pictures]'"


def available(what, quiet=False):
    """Whether matplotlib imports; if not, say on stderr in one line (unless quiet) that what
    is skipped."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if not quiet:
            print(f"tinyconv: matplotlib is not installed, so no {what} is drawn "
                  f"({INSTALL_HINT})", file=sys.stderr)
        return False
    return True


def new_figure(inches):
    """A Figure of inches (width, height) at DPI with constrained layout, outside pyplot."""
    from matplotlib.figure import Figure
    return Figure(figsize=inches, dpi=DPI, layout="constrained")


def save(figure, path):
    """Render figure to a 256-colour PNG at path, atomically; returns path.

    The palette (Pillow, which matplotlib itself depends on) makes files 2-3x smaller
    than matplotlib's own RGBA PNGs, with no visible change to these flat-coloured plots.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    image = rgb.quantize(256, dither=Image.Dither.NONE)
    atomic_write(path, lambda file: image.save(file, format="PNG", optimize=True))
    # a figure is a web of reference cycles that only the cyclic collector frees: collect it
    # now, or a training run that draws its curves every epoch grows by ~2 MB an epoch
    figure.clear()
    gc.collect()
    return path


def read_metrics(path):
    """The epoch records of a metrics.jsonl file, in order."""
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]


def sparse_log_label(value, _):
    """A log axis' minor tick label only at 2 and 5 times a power of ten, so labels never crowd."""
    leading = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if round(leading) in (2, 5) else ""


def curves(metrics, path, title="training"):
    """Write train/test loss and lr (left) and test accuracy (right) per epoch to a PNG."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    epochs = [m["epoch"] for m in metrics]
    figure = new_figure(INCHES["curves"])
    figure.get_layout_engine().set(wspace=0.05)  # room between the lr and accuracy labels
    figure.suptitle(title)
    loss, accuracy = figure.subplots(1, 2)
    loss.plot(epochs, [m["train_loss"] for m in metrics], "o-", ms=3, label="train loss")
    loss.plot(epochs, [m["test_loss"] for m in metrics], "s-", ms=3, label="test loss")
    loss.set(yscale="log", xlabel="epoch", ylabel="mean cross-entropy")
    lr = loss.twinx()
    lr.step(epochs, [m["lr"] for m in metrics], "k--", where="mid", lw=1, alpha=0.5,
            label="learning rate")
    rates = sorted({m["lr"] for m in metrics})
    lr.set(yscale="log", ylabel="learning rate", yticks=rates,
           yticklabels=[f"{rate:g}" for rate in rates])
    lr.minorticks_off()
    loss.yaxis.set_major_formatter("{x:g}")
    loss.yaxis.set_minor_formatter(FuncFormatter(sparse_log_label))
    handles = loss.get_legend_handles_labels()[0] + lr.get_legend_handles_labels()[0]
    loss.legend(handles=handles, loc="upper right", fontsize="small")
    percent = [100 * m["test_accuracy"] for m in metrics]
    best = int(np.argmax(percent))
    accuracy.plot(epochs, percent, "o-", ms=3, color="tab:green")
    accuracy.plot(epochs[best], percent[best], "*", ms=12, color="tab:red",
                  label=f"best {percent[best]:.2f}% (epoch {epochs[best]})")
    accuracy.set(xlabel="epoch", ylabel="test accuracy (%)")
    accuracy.legend(loc="lower right", fontsize="small")
    accuracy.set_ylim(top=min(100.0, accuracy.get_ylim()[1]))
    for axes in (loss, accuracy):
        axes.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axes.grid(alpha=0.3)
    return save(figure, path)


def confusion(counts, path):
    """Write the row-normalised confusion matrix (log colours, counts written) to a PNG."""
    from matplotlib.colors import LogNorm
    counts = np.asarray(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = counts / counts.sum(axis=1, keepdims=True)
    shown = np.ma.masked_where(counts == 0, fractions)  # empty cells stay white
    figure = new_figure(INCHES["confusion"])
    axes = figure.subplots()
    image = axes.imshow(shown, cmap="Blues", norm=LogNorm(vmin=1e-3, vmax=1.0))
    for (true, predicted), count in np.ndenumerate(counts):
        if count:
            dark = fractions[true, predicted] > 0.1
            axes.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                      color="white" if dark else "black")
    classes = range(len(counts))
    axes.set(xticks=classes, yticks=classes, xlabel="predicted digit", ylabel="true digit",
             title=f"confusion on {counts.sum():,} test images, accuracy "
                   f"{100 * np.trace(counts) / counts.sum():.2f}%")
    bar = figure.colorbar(image, ax=axes, label="share of the true digit's images (log scale)")
    bar.ax.yaxis.set_major_formatter(lambda share, _: f"{100 * share:g}%")
    return save(figure, path)


def mistakes_inches(count):
    """Figure size (width, height) in inches of a mistakes grid showing count digits."""
    rows = max(1, -(-min(count, MAX_MISTAKES) // MISTAKE_COLUMNS))
    return (MISTAKE_COLUMNS * MISTAKE_CELL[0], rows * MISTAKE_CELL[1] + MISTAKE_HEADER)


def mistakes(images, labels, predicted, probability, path, total):
    """Write a grid of misclassified digits, most confident first, each 'true -> pred (p)'.

    images uint8 (M, 28, 28), labels and predicted (M,), probability (M,) of the predicted
    class; total is how many images were tested. Shows at most MAX_MISTAKES.
    """
    order = np.argsort(-np.asarray(probability), kind="stable")[:MAX_MISTAKES]
    figure = new_figure(mistakes_inches(len(order)))
    if len(labels) == 0:
        figure.suptitle(f"no mistakes on {total:,} test images")
    else:
        most = "all" if len(order) == len(labels) else f"the {len(order)} most confident of"
        figure.suptitle(f"{most} {len(labels)} mistakes on {total:,} test images: "
                        "true -> predicted (probability)")
    rows = -(-max(len(order), 1) // MISTAKE_COLUMNS)
    for axes in np.ravel(figure.subplots(rows, MISTAKE_COLUMNS, squeeze=False)):
        axes.set_axis_off()
    for axes, index in zip(figure.axes, order, strict=False):
        axes.imshow(images[index], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        axes.set_title(f"{labels[index]} -> {predicted[index]} ({probability[index]:.2f})",
                       fontsize=8)
    return save(figure, path)


def filters(weights, path, title):
    """Write conv filters (OC, 1, K, K) side by side on one symmetric colour scale to a PNG."""
    weights = np.asarray(weights)[:, 0]
    limit = np.abs(weights).max()
    figure = new_figure(INCHES["filters"])
    figure.suptitle(title)
    panels = figure.subplots(1, len(weights))
    for number, (axes, kernel) in enumerate(zip(panels, weights, strict=True)):
        image = axes.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes.set_title(f"filter {number}", fontsize=9)
        axes.set(xticks=[], yticks=[])
    figure.colorbar(image, ax=panels, label="weight", shrink=0.9)
    return save(figure, path)


def tiled(maps, columns):
    """One (rows*(H+1)-1, columns*(W+1)-1) image of maps (C, H, W), NaN in the 1-pixel gaps."""
    count, height, width = maps.shape
    rows = -(-count // columns)
    mosaic = np.full((rows * (height + 1) - 1, columns * (width + 1) - 1), np.nan)
    for number, feature in enumerate(maps):
        top, left = (number // columns) * (height + 1), (number % columns) * (width + 1)
        mosaic[top:top + height, left:left + width] = feature
    return mosaic


def feature_maps(image, stages, probabilities, path, title):
    """Write the input, each stage's maps and the class probabilities, top to bottom, to a PNG.

    image (32, 32) is the network input; stages is a list of (label, activations) with
    activations (C, H, W) or (F,), tanh outputs in [-1, 1]; probabilities (10,).
    """
    from matplotlib import colormaps
    diverging = colormaps["RdBu_r"].with_extremes(bad="white")
    figure = new_figure(INCHES["feature_maps"])
    figure.suptitle(title)
    # rows: input, one per stage, probabilities; heights roughly those of their mosaics
    panels = figure.subplots(len(stages) + 2, 1, height_ratios=FEATURE_ROW_HEIGHTS)
    panels[0].imshow(image, cmap="gray")
    panels[0].set_ylabel(f"input\n{image.shape[0]}x{image.shape[1]}")
    for axes, (label, maps) in zip(panels[1:], stages, strict=False):
        if maps.ndim == 1 or maps.shape[1:] == (1, 1):  # a vector: six rows of values
            shape, mosaic = f"{maps.size} values", maps.reshape(6, -1)
        else:
            shape = f"{len(maps)} maps {maps.shape[1]}x{maps.shape[2]}"
            mosaic = tiled(maps, min(len(maps), 8))
        shown = axes.imshow(mosaic, cmap=diverging, vmin=-1, vmax=1)
        axes.set_ylabel(f"{label}\n{shape}")
    bars = panels[-1]
    bars.bar(range(len(probabilities)), probabilities, color="tab:blue")
    bars.set(xticks=range(len(probabilities)), ylim=(0, 1), xlabel="digit")
    bars.set_ylabel("softmax\nprobabilities")
    for axes in panels:
        axes.yaxis.label.set(rotation=0, ha="right", va="center", fontsize=9)
        axes.set_anchor("W")  # images keep their aspect; all start at the labels' edge
    for axes in panels[:-1]:
        axes.set(xticks=[], yticks=[])
    figure.colorbar(shown, ax=panels[1:-1], label="activation (tanh)", shrink=0.5, panchor=False)
    return save(figure, path)
