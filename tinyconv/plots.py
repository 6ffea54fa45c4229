"""Pictures: training curves, confusion matrix, mistakes, conv filters, feature maps.

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
INCHES = {"curves": (9.0, 3.4), "confusion": (6.2, 5.2)}  # the pictures of a fixed size
AUGMENT_CELL = 0.8           # inches per picture of augment.png
MISTAKE_COLUMNS = 10
MISTAKE_CELL = (0.85, 1.0)   # inches per digit of the mistakes grid
MISTAKE_HEADER = 0.45        # inches for its title
MAX_MISTAKES = 40
# a grid of many small pictures (maps, filters, values) is about this many times as wide as
# tall, counted in pictures: 6 make one row, 16 two rows of 8, 120 five rows of 24
GRID_ASPECT = 4
FILTER_WIDTH = 7.0           # inches of filters.png; its height follows the rows of filters
FILTER_ROW = 1.4
FILTER_HEADER = 0.5
FEATURE_WIDTH = 9.0          # inches of feature_maps.png; its height follows the rows
FEATURE_IMAGE_WIDTH = 6.6    # what a row's picture may span, right of its label
FEATURE_ROW = (0.5, 1.1)     # the least and most inches of a row of maps
FEATURE_BARS = 0.9           # inches of the probabilities row
FEATURE_HEADER = 0.35        # inches of the title
INSTALL_HINT = "pip install 'tinyconv[pictures]'"
MISSING = f"matplotlib is not installed, so no {{}} is drawn ({INSTALL_HINT})"


def available(what, quiet=False):
    """Whether matplotlib imports; if not, say on stderr in one line (unless quiet) that what
    is skipped."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if not quiet:
            print(f"tinyconv: {MISSING.format(what)}", file=sys.stderr)
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
    validated = all("val_loss" in m for m in metrics)
    if validated:
        loss.plot(epochs, [m["val_loss"] for m in metrics], "^-", ms=3, label="val loss")
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
    accuracy.plot(epochs, percent, "o-", ms=3, color="tab:green", label="test")
    if validated:  # the best epoch is the validation's, as best.npz's
        judged = [100 * m["val_accuracy"] for m in metrics]
        accuracy.plot(epochs, judged, "^-", ms=3, color="tab:purple", label="validation")
    else:
        judged = percent
    best = int(np.argmax(judged))
    accuracy.plot(epochs[best], judged[best], "*", ms=12, color="tab:red",
                  label=f"best {judged[best]:.2f}% (epoch {epochs[best]})")
    accuracy.set(xlabel="epoch", ylabel="accuracy (%)")
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


def augmented(rows, path, title):
    """Write a grid of canvases (digits, 1 + variants, S, S), 0-255: each digit's row its
    canvas as it is, then its variants, as training draws them."""
    digits, columns = rows.shape[:2]
    figure = new_figure((AUGMENT_CELL * columns, AUGMENT_CELL * digits + 0.4))
    figure.suptitle(title, fontsize=10)
    for axes, canvas in zip(figure.subplots(digits, columns, squeeze=False).ravel(),
                            rows.reshape(-1, *rows.shape[2:]), strict=True):
        axes.imshow(canvas, cmap="gray", vmin=0, vmax=255)
        axes.set(xticks=[], yticks=[])
    for axes, label in zip(figure.axes[:columns], ["as it is", *["drawn"] * (columns - 1)],
                           strict=True):
        axes.set_title(label, fontsize=8)
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


def grid(count):
    """(rows, columns) of a grid of count pictures, about GRID_ASPECT times as wide as tall."""
    rows = max(1, round(np.sqrt(count / GRID_ASPECT)))
    return rows, -(-count // rows)


def filters_inches(count):
    """Figure size (width, height) in inches of filters.png showing count filters."""
    return (FILTER_WIDTH, FILTER_HEADER + grid(count)[0] * FILTER_ROW)


def filters(weights, path, title):
    """Write conv filters (OC, 1, KH, KW) in a grid, on one symmetric colour scale, to a PNG."""
    weights = np.asarray(weights)
    if weights.ndim != 4 or weights.shape[1] != 1:
        raise ValueError(f"filters: expected the weight (OC, 1, KH, KW) of a convolution of one "
                         f"input channel, found shape {weights.shape}")
    kernels = weights[:, 0]
    limit = np.abs(kernels).max()
    figure = new_figure(filters_inches(len(kernels)))
    figure.suptitle(title)
    panels = np.ravel(figure.subplots(*grid(len(kernels)), squeeze=False))
    for axes in panels[len(kernels):]:
        axes.set_axis_off()
    for number, (axes, kernel) in enumerate(zip(panels, kernels, strict=False)):
        image = axes.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes.set_title(f"filter {number}", fontsize=9)
        axes.set(xticks=[], yticks=[])
    figure.colorbar(image, ax=panels.tolist(), label="weight", shrink=0.9)
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


def is_maps(shape):
    """Whether activations of this shape are maps (C, H, W) rather than values ((F,), (C,1,1))."""
    return len(shape) == 3 and tuple(shape[1:]) != (1, 1)


def mosaic(values):
    """Activations as one 2-D picture: maps tiled in a grid with 1-pixel gaps, other values
    (vectors, 1x1 maps) in a grid of their own; NaN (drawn white) where nothing is."""
    if is_maps(values.shape):
        return tiled(values, grid(len(values))[1])
    flat = np.ravel(values).astype(np.float64)
    rows, columns = grid(flat.size)
    return np.append(flat, np.full(rows * columns - flat.size, np.nan)).reshape(rows, columns)


def describe(shape):
    """What a row of activations holds: '6 maps 28x28' or '120 values'."""
    if is_maps(shape):
        return f"{shape[0]} map{'s' if shape[0] > 1 else ''} {shape[1]}x{shape[2]}"
    return f"{int(np.prod(shape))} values"


def feature_row_inches(shape):
    """Height in inches of a row showing activations of this shape: its mosaic spanning
    FEATURE_IMAGE_WIDTH, kept within FEATURE_ROW (a narrower picture where it would be taller)."""
    height, width = mosaic(np.zeros(shape)).shape
    return float(np.clip(FEATURE_IMAGE_WIDTH * height / width, *FEATURE_ROW))


def feature_maps_inches(shapes):
    """Figure size (width, height) in inches of feature_maps.png for the input's and each
    row's activation shapes: the title, a row each, the probabilities; whole pixels at DPI."""
    height = FEATURE_HEADER + sum(map(feature_row_inches, shapes)) + FEATURE_BARS
    return (FEATURE_WIDTH, round(height * DPI) / DPI)


def activation_limit(arrays):
    """The colour scale's bound: 1 when every value lies in [-1, 1] (tanh outputs, so that
    their colours mean the same in every picture), else the largest magnitude."""
    return max([1.0, *(float(np.abs(values).max()) for values in arrays)])


def feature_maps(image, rows, probabilities, path, title):
    """Write the input, each row's activations and the class probabilities, top to bottom.

    image (C, H, W) is the network input, drawn in grey levels; rows is a list of (label,
    activations), each of any shape (maps (C, H, W), values (F,)); probabilities (V,). The
    activations share one symmetric colour scale: [-1, 1] where every value lies in it (tanh
    outputs), otherwise up to the largest magnitude, so a colour means one value in every row.
    """
    from matplotlib import colormaps
    diverging = colormaps["RdBu_r"].with_extremes(bad="white")
    shapes = [image.shape, *(np.shape(values) for _, values in rows)]
    figure = new_figure(feature_maps_inches(shapes))
    figure.suptitle(title)
    panels = figure.subplots(len(rows) + 2, 1, height_ratios=[
        *map(feature_row_inches, shapes), FEATURE_BARS])
    panels[0].imshow(mosaic(image), cmap=colormaps["gray"].with_extremes(bad="white"))
    panels[0].set_ylabel(f"input\n{describe(image.shape)}")
    limit = activation_limit([values for _, values in rows])
    for axes, (label, values) in zip(panels[1:], rows, strict=False):
        shown = axes.imshow(mosaic(values), cmap=diverging, vmin=-limit, vmax=limit)
        axes.set_ylabel(f"{label}\n{describe(np.shape(values))}")
    bars = panels[-1]
    bars.bar(range(len(probabilities)), probabilities, color="tab:blue")
    bars.set(xticks=range(len(probabilities)), ylim=(0, 1), xlabel="class")
    bars.set_ylabel("softmax\nprobabilities")
    for axes in panels:
        axes.yaxis.label.set(rotation=0, ha="right", va="center", fontsize=9)
        axes.set_anchor("W")  # images keep their aspect; all start at the labels' edge
    for axes in panels[:-1]:
        axes.set(xticks=[], yticks=[])
    if rows:
        figure.colorbar(shown, ax=panels[1:-1].tolist(), label="activation", shrink=0.5,
                        panchor=False)
    return save(figure, path)
