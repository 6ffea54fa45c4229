"""What the commands share: their parser, common flags, error handling and exit statuses.

Exit statuses, the same in every command (each --help says which apply):
  0  done
  1  the job ran and failed: training stopped at a non-finite loss; predict could not
     classify some of its images (it classified the others)
  2  the command was stopped by its input or environment, before or while doing its job: a
     bad flag value (argparse's own usage errors are 2 too), a missing or damaged checkpoint,
     missing MNIST files, an unavailable device, a missing package, a file it cannot write
  130, 143  interrupted by SIGINT (Ctrl-C) or SIGTERM: 128 plus the signal's number
Every error is one line on stderr, "error: ...", never a traceback; an interrupt is one line
too, "stopped: ...".
"""

import argparse
import contextlib
import signal
import sys
import textwrap
import threading

import numba

from tinyconv.data import DATASETS, NORMALIZE_MODES, RESIZE_MODES
from tinyconv.evaluation import check_classifier, preprocessing
from tinyconv.interop import (
    CHECKPOINT_HELP,
    TORCH_PREPROCESSING,
    TRUST_PICKLE_HELP,
    MissingDependencyError,
    load_model,
)
from tinyconv.kernels import BACKENDS, DeviceUnavailable

DONE, FAILED, STOPPED = 0, 1, 2
# errors of the input or environment (CheckpointError, DataError, ImageError and ShapeError are
# ValueErrors)
STOPPING_ERRORS = (ValueError, OSError, MissingDependencyError, DeviceUnavailable)
STOPPED_HELP = ("2 when its input or environment stopped it: a bad flag value, a missing or "
                "damaged checkpoint, missing MNIST files, an unavailable device, a missing "
                "package, a file it cannot write")
COMPILE_NOTICE = ("tinyconv: compiling the kernels for this machine (the first run takes about "
                  "15 s; Numba caches them for later runs)")
HELP_WIDTH = 79
# what each mode of data.py's resizing and normalising does: --help, and ONNX metadata
RESIZE_MEANING = {"pad": "zero padding by 2 (LeNet's own)",
                  "bilinear": "bilinear resizing (torchvision's Resize(32), the report's)"}
NORMALIZE_MEANING = {"standard": "(x/255 - 0.1307)/0.3081", "unit": "x/255 (ToTensor, the "
                     "report's)", "none": "x as read, 0-255"}


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM arrived: the command stops, printing `message` (what was
    done and what is kept) as one line; its exit status is 128 + signum. A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` swallows it."""

    def __init__(self, signum, message=None):
        name = signal.Signals(signum).name
        super().__init__(message or f"interrupted by {name}")
        self.signum = signum

    def again(self, message):
        """The same interrupt, with a message that says more."""
        return Interrupted(self.signum, message)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stop_handlers(handler):
    """handler for SIGINT and SIGTERM inside the block, the previous ones after it. The two
    signals are blocked while the handlers change, so that none lands half-way (a signal
    that arrived meanwhile is delivered once the block's handler is in place). Outside the
    main thread, where signals cannot be caught, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        for signum, old in previous.items():
            signal.signal(signum, old)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@contextlib.contextmanager
def interrupts_raised():
    """SIGINT and SIGTERM raise Interrupted inside the block."""
    def raise_interrupted(signum, frame):
        raise Interrupted(signum)

    with _stop_handlers(raise_interrupted):
        yield


@contextlib.contextmanager
def interrupts_held():
    """SIGINT and SIGTERM that arrive inside the block are held until its end, then raise
    Interrupted there: a run's checkpoint, best copy and metrics line are written together or
    not at all."""
    held = []
    with _stop_handlers(lambda signum, frame: held.append(signum)):
        yield
    if held:
        raise Interrupted(held[0])


class UsageError(ValueError):
    """A command line that argparse refuses (unknown flag, bad value): exit status 2."""


class WriteError(RuntimeError):
    """A file or directory that the command must write cannot be written; the message names
    it and says why."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors raised as UsageError (one line, exit status 2 via run) rather
    than printed as usage plus a line."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def parser(prog, description, examples=(), failed=None):
    """A command's Parser: the description wrapped, then the example command lines, then the
    exit statuses, `failed` saying when it exits with 1 (None: it never does)."""
    statuses = ["0 when done", *([f"1 {failed}"] if failed else []), STOPPED_HELP,
                "130 or 143 when interrupted by Ctrl-C (SIGINT) or SIGTERM"]
    epilog = "\n".join([
        *(["examples:", *(f"  {line}" for line in examples), ""] if examples else []),
        textwrap.fill("exit status: " + "; ".join(statuses) + ". Every error is one line on "
                      "stderr, starting 'error:'.", HELP_WIDTH)])
    return Parser(prog=prog, description=textwrap.fill(description, HELP_WIDTH), epilog=epilog,
                  formatter_class=argparse.RawDescriptionHelpFormatter)


def run(parser, command, argv=None, failed=(), kernels=True):
    """Parse argv and run command(args), returning the exit status: command's own (None for
    0), 1 for the exception types in `failed` (the job ran and failed), 2 for those of
    STOPPING_ERRORS, 128 + the signal's number for SIGINT and SIGTERM; each error printed as
    one line, an interrupt as one "stopped: ..." line. A command that runs kernels (`kernels`)
    has Numba's CPU target loaded first, without its BLAS probe (load_numba_cpu_target)."""
    try:
        with interrupts_raised():
            args = parser.parse_args(argv)
            if kernels:
                load_numba_cpu_target()
            status = command(args)
    except Interrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr, flush=True)
        return 128 + exc.signum
    except failed as exc:
        return report(exc, FAILED)
    except (*STOPPING_ERRORS, UsageError, WriteError) as exc:
        return report(exc, STOPPED)
    return DONE if status is None else status


def _no_blas():
    raise ImportError("tinyconv's commands skip Numba's BLAS probe")


def load_numba_cpu_target():
    """Load Numba's CPU target, what its first compile or cache hit does anyway, with its probe
    for BLAS answered "none": for a command's process (run), not a library user's.

    Where SciPy is installed, that probe imports scipy.linalg only to decide whether jitted
    np.correlate and np.convolve may call BLAS, which no tinyconv kernel does; the import
    weighs a command down in memory and start-up time (README: "Speed and memory"). Those two
    then use Numba's own loop; everything else, Numba's linear algebra included, works as
    before.
    """
    from numba.core import registry
    from numba.np import linalg

    if "numba.np.arraymath" in sys.modules:  # the target is loaded, its probe answered
        return
    probe = linalg.ensure_blas
    linalg.ensure_blas = _no_blas  # numba.np.arraymath imports it by name and calls it once
    try:
        registry.cpu_target.target_context.refresh()
    finally:
        linalg.ensure_blas = probe
        if "numba.np.arraymath" in sys.modules:
            sys.modules["numba.np.arraymath"].ensure_blas = probe


def report(error, status):
    """Print an error as one line on stderr ("error: ..."); returns status."""
    if isinstance(error, OSError) and error.strerror:  # "path: Permission denied"
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    else:
        text = str(error)
    print(f"error: {' '.join(text.split())}", file=sys.stderr)
    return status


def os_reason(error):
    """Why an OSError happened, in words: 'File exists', not '[Errno 17] File exists: ...'."""
    return error.strerror or str(error)


@contextlib.contextmanager
def writing(path):
    """Turn an OSError raised inside the block into WriteError('cannot write PATH: why')."""
    try:
        yield
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {os_reason(exc)}") from None


# ---- the flags several commands take, each defined here once


def count(least):
    """An argparse type: an int of at least `least`, else a message with what was found."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, found {value}")
        return value

    return parse


def positive(text):
    """An argparse type: a float above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, found {value}")
    return value


def non_negative(text):
    """An argparse type: a number of at least 0, an int when it is whole ("2" -> 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, found {value}")
    return int(value) if value.is_integer() else value


def number_pair(text):
    """An argparse type: two positive numbers, "A,B" -> [A, B]."""
    parts = text.split(",")
    try:
        pair = [float(part) for part in parts]
    except ValueError:
        pair = []
    if len(pair) != 2 or not all(0 < value < float("inf") for value in pair):
        raise argparse.ArgumentTypeError(f"expected two positive numbers A,B, found {text!r}")
    return pair


def add_checkpoint(parser):
    """The CHECKPOINT argument of the commands that read a model."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINT_HELP)


def add_trust_pickle(parser):
    parser.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)


def add_device(parser, default="cpu", note=""):
    parser.add_argument("--device", choices=BACKENDS, default=default,
                        help=f"where the kernels run: cpu (default{note}) or cuda, an NVIDIA "
                             "GPU (pip install 'tinyconv[cuda]')")


def add_threads(parser):
    parser.add_argument("--threads", type=count(1), metavar="N",
                        help="Numba threads (default: all cores)")


def add_data_dir(parser):
    parser.add_argument("--data-dir", metavar="DIR",
                        help="directory holding the data set's four files, in MNIST's names "
                             "(default: TINYCONV_DATA, the bundled data/mnist for MNIST, the "
                             "per-user cache, then a download)")


def add_dataset(parser, default):
    """--dataset, one of data.DATASETS; default says what an unset one means."""
    parser.add_argument("--dataset", choices=DATASETS,
                        help=f"the data set in MNIST's format (default {default}); only MNIST "
                             "is bundled, the others are downloaded into the per-user cache")


def dataset_of_run(args, header):
    """--dataset if given, else the one the checkpoint's run trained on (MNIST for a PyTorch
    file or an older checkpoint, which record none)."""
    if args.dataset:
        return args.dataset
    return header["config"].get("dataset", "mnist") if header else "mnist"


def add_preprocessing(parser, default):
    """--resize and --normalize, with data.py's modes; default(key) says where an unset one
    comes from ("resize" or "normalize")."""
    for key, modes, meaning, what in (
            ("resize", RESIZE_MODES, RESIZE_MEANING, "how 28x28 digits become 32x32"),
            ("normalize", NORMALIZE_MODES, NORMALIZE_MEANING, "pixel scaling")):
        described = "; ".join(f"{mode}: {meaning[mode]}" for mode in modes)
        parser.add_argument(f"--{key}", choices=modes, help=f"{what}; {described} (default: "
                                                             f"{default(key)})")


def add_inference_flags(parser):
    """The flags of the commands that run a checkpoint's network on MNIST-like digits
    (evaluate, predict, visualize): CHECKPOINT and how to read and feed it."""
    add_checkpoint(parser)
    add_trust_pickle(parser)
    add_device(parser)
    add_threads(parser)
    add_preprocessing(parser, lambda key: "the checkpoint's training recipe's; for a PyTorch "
                                          f"file the report's, {TORCH_PREPROCESSING[key]}")


def classifier_from_flags(args, labelled=False):
    """(model in eval mode, {"resize", "normalize"}, run header or None) for the flags of
    add_inference_flags: --resize and --normalize override what the checkpoint recorded, and
    for a PyTorch file, which records nothing, a note on stderr says what is used."""
    model, header = load_model(args.checkpoint, args.trust_pickle, args.device)
    saved = preprocessing(header, args.checkpoint)
    config = {"resize": args.resize or saved["resize"],
              "normalize": args.normalize or saved["normalize"]}
    if header is None and not (args.resize and args.normalize):
        print(f"note: a PyTorch file records no preprocessing; using --resize "
              f"{config['resize']} --normalize {config['normalize']} (the report's where not "
              "given)", file=sys.stderr)
    return check_classifier(model, args.checkpoint, labelled), config, header


# ---- running


def compile_notice(enabled=True, after=1.0):
    """A started timer that prints COMPILE_NOTICE unless cancelled within `after` seconds.

    Start it before a model's first step and cancel it after: a step takes milliseconds, so
    one that is still running a second later is compiling kernels (on a first run, or after
    the kernel files changed).
    """
    from tqdm import tqdm  # writes above any progress bar on the screen

    timer = threading.Timer(after, tqdm.write, [COMPILE_NOTICE], {"file": sys.stderr})
    timer.daemon = True
    if enabled:
        timer.start()
    return timer


def set_threads(threads):
    """Use that many Numba threads (None: leave Numba's default, all cores)."""
    if threads is None:
        return
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= limit:
        raise ValueError(f"--threads must lie between 1 and {limit} (NUMBA_NUM_THREADS), "
                         f"found {threads}")
    numba.set_num_threads(threads)
