"""What every bench script shares: the header, the alternating timer, fixed-width rows, JSON.

Imports nothing beyond the standard library, so that a bench's child processes, which import
their script and with it this file, load only the library they measure.
"""

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

# units where more is better; in every other unit (ms, s, MiB) less is better
HIGHER_IS_BETTER = ("samples/s", "calls/s", "GFLOP/s", "% of peak")


def ratio_meaning(peer="torch"):
    """What a row's ratio means, against `peer` (the library in the peer column)."""
    return (f"tinyconv's advantage, > 1 when tinyconv is ahead: tinyconv/{peer} for rates "
            f"({', '.join(HIGHER_IS_BETTER)}), {peer}/tinyconv for times and memory")


# (title, width, alignment) of each column of a row; the peer's title is its library's name
COLUMNS = (("case", 34, "<"), ("shape", 16, "<"), ("tinyconv", 10, ">"), ("peer", 11, ">"),
           ("ratio", 6, ">"), ("unit", 9, "<"))


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one callable: the best and the median round."""

    min: float
    median: float


@dataclass(frozen=True)
class Row:
    """One case: tinyconv's figure, the peer library's (None where it has no counterpart),
    the unit."""

    case: str
    shape: str
    tinyconv: float
    peer: float | None
    unit: str
    against: str | None = None  # the peer library, where a bench has more than one


    @property
    def ratio(self):
        """tinyconv's advantage over the peer (see ratio_meaning); None without its figure."""
        if self.peer is None:
            return None
        if self.unit in HIGHER_IS_BETTER:
            return self.tinyconv / self.peer
        return self.peer / self.tinyconv


def flops(layer, in_shape, batch):
    """Floating-point operations of one forward call (a multiply-add counts 2) of a
    convolution or linear layer, or of a residual block's body; 0 for the others, timed in
    calls/s. A weight meets each output position once: weight.size multiply-adds per position
    of the output (OH*OW for a convolution, 1 for a linear layer). The backward does twice as
    many (dinp and dweight), once as many without dinp."""
    from tinyconv import nn

    if isinstance(layer, nn.Residual):
        return network_flops(layer.body, in_shape, batch)
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        return 0
    positions = math.prod(layer.out_shape(in_shape)[1:])
    return 2 * batch * math.prod(layer.params(in_shape)["weight"]) * positions


def network_flops(layers, in_shape, batch):
    """flops of a chain of layers from in_shape (a Sequential's layers, a body)."""
    total, shape = 0, tuple(in_shape)
    for layer in layers:
        total += flops(layer, shape, batch)
        shape = tuple(layer.out_shape(shape))
    return total


def train_step_flops(layers, in_shape, batch):
    """flops of a training step of a chain of layers: the forward, and a backward of twice as
    many, less the dinp of the first layer with parameters (no gradient reaches the layers
    before it, and the network's input needs none). The optimizer's update and the
    elementwise layers are not counted (as torch.utils.flop_counter does not)."""
    return 3 * network_flops(layers, in_shape, batch) - (
        _first_dinp_flops(layers, in_shape, batch) or 0)


def _first_dinp_flops(layers, in_shape, batch):
    """flops of the dinp a step skips: that of the first layer with parameters, when it is a
    convolution or a linear layer, looked for inside a residual block on the way (its skip
    carries no gradient back either); None where no layer has parameters."""
    from tinyconv import nn

    shape = tuple(in_shape)
    for layer in layers:
        if isinstance(layer, nn.Residual):
            inside = _first_dinp_flops(layer.body, shape, batch)
            if inside is not None:
                return inside
        elif layer.params(shape):
            return flops(layer, shape, batch)
        shape = tuple(layer.out_shape(shape))
    return None


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or what platform knows elsewhere."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit():
    """The checkout's commit (git describe --always --dirty), or "unknown" outside git."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parent, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def busy_cores(seconds=0.5):
    """Cores' worth of CPU the machine used over the next `seconds` (Linux), or None."""
    def sample():
        with open("/proc/stat") as stat:  # first line: jiffies per state, all cores summed
            user, nice, system, idle, iowait, irq, softirq, steal = map(
                int, stat.readline().split()[1:9])
        return user + nice + system + idle + iowait + irq + softirq + steal, idle + iowait

    try:
        total, idle = sample()
        time.sleep(seconds)
        total_after, idle_after = sample()
    except (OSError, ValueError):
        return None
    return os.cpu_count() * (1 - (idle_after - idle) / max(total_after - total, 1))


def busy_warning(busy):
    """A warning when other work keeps half a core or more busy (see busy_cores), or None."""
    if busy is None or busy < 0.5:
        return None
    return (f"warning: other processes keep {busy:.1f} of the {os.cpu_count()} cores busy: the "
            "timings will be noisy, multi-threaded ones most (a parallel region waits for its "
            "slowest thread); compare the min, or rerun when the machine is idle")


def make_header(bench, threads, method, busy, peer="torch",
                packages=("numpy", "numba", "torch")):
    """The run's context: bench, command, commit, machine, its other load, threads, versions
    of `packages`, method, and what the ratio against `peer` means (None: a bench of tinyconv
    alone). busy: busy_cores() measured before the bench started."""
    others = "unknown" if busy is None else f"{busy:.2f} cores busy just before the start"
    return {
        "bench": bench,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "commit": commit(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        # other processes skew the timings: how busy the machine was tells how far to trust them
        "other load": (f"{others}; load average "
                       + " ".join(f"{load:.2f}" for load in os.getloadavg())),
        "threads": threads,
        "python": platform.python_version(),
        **{package: version(package) for package in packages},
        "method": method,
        **({"peer": peer, "ratio": ratio_meaning(peer)} if peer else {}),
    }


# the pause before each timed block: after its last call, a library's idle OpenMP threads spin
# for several ms on the cores the next block needs (measured: bench/README.md, train.py)
SETTLE = 0.02  # seconds


def alternate(calls, rounds, steps, warmup=3, synchronize=None, prime=True):
    """Time callables in turns: per callable, seconds per call, min and median over rounds.

    Each callable first runs `warmup` times untimed (compilation, allocation, caches). Then, in
    each round, each runs `steps` times in a row, timed as one block, after a pause of SETTLE
    seconds and (if prime) one untimed call: the block then sees the machine as a program that
    runs only this library would, the other library's OpenMP threads asleep and its own awake
    (see SETTLE); a block of calls that take seconds needs no untimed call. synchronize, if
    given, is called before a block's clock starts and before it stops: a GPU backend passes
    its device synchronize so that a block's time includes the work it queued.
    """
    for call in calls:
        for _ in range(warmup):
            call()
    seconds = [[] for _ in calls]
    for round_index in range(rounds):
        # every other round runs the callables in reverse, so none always follows the same one
        # (which may have just evicted the caches or heated the cores)
        order = list(range(len(calls)))
        if round_index % 2:
            order.reverse()
        for index in order:
            time.sleep(SETTLE)
            if prime:
                calls[index]()
            if synchronize:
                synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                calls[index]()
            if synchronize:
                synchronize()
            seconds[index].append((time.perf_counter() - start) / steps)
    return [Timing(min(block), statistics.median(block)) for block in seconds]


def timing_rows(case, shape, timings, work, rate_unit):
    """Rows of a timed case from (tinyconv, peer) Timings: ms per call (min, median), and
    the rate at the median, where one call does `work` (samples, or GFLOP for GFLOP/s)."""
    ours, theirs = timings
    return [
        Row(f"{case}, min", shape, ours.min * 1e3, theirs.min * 1e3, "ms"),
        Row(f"{case}, median", shape, ours.median * 1e3, theirs.median * 1e3, "ms"),
        Row(case, shape, work / ours.median, work / theirs.median, rate_unit),
    ]


def format_header(header):
    """The header as aligned `key  value` lines."""
    width = max(len(key) for key in header)
    lines = []
    for key, value in header.items():
        if isinstance(value, dict):
            value = ", ".join(f"{name} {count}" for name, count in value.items())
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)


def _cell(value, width, align):
    if value is None:
        text = "-"
    elif isinstance(value, str):
        text = value
    elif abs(value) >= 1000:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.4g}"
    return f"{text:{align}{width}}"


def format_table_head(peer="torch"):
    """The column titles (the peer's column titled `peer`) and a rule under them."""
    titles = " | ".join(_cell(peer if title == "peer" else title, width, align)
                        for title, width, align in COLUMNS)
    titles = titles.rstrip()
    return f"{titles}\n{'-' * len(titles)}"


def format_row(row):
    """A row at the columns' fixed widths; the ratio with two decimals."""
    ratio = None if row.ratio is None else f"{row.ratio:.2f}"
    values = (row.case, row.shape, row.tinyconv, row.peer, ratio, row.unit)
    return " | ".join(_cell(value, width, align)
                      for value, (_, width, align) in zip(values, COLUMNS, strict=True)).rstrip()


def write_json(path, header, rows):
    """The header and the rows (each with its ratio) as one JSON document."""
    document = {"header": header,
                "rows": [{**asdict(row), "ratio": row.ratio} for row in rows]}
    with open(path, "w") as out:
        json.dump(document, out, indent=2)
        out.write("\n")


# ---- one process per library, asked through a pipe


def positive(text):
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, found {value}")
    return value


def answer(connection, requests):
    """A worker's loop: answer each request (name, *args) with ("ok", requests[name](*args))
    or ("error", its traceback), until sent None."""
    while (request := connection.recv()) is not None:
        name, *args = request
        try:
            connection.send(("ok", requests[name](*args)))
        except Exception:
            connection.send(("error", traceback.format_exc()))


class Worker:
    """One library's side in a process of its own: target(*args, connection) runs there (a
    serve function that ends in answer), asked through a pipe; a context manager."""

    def __init__(self, library, target, args):
        # spawn: a fresh interpreter that imports only the bench's file, then its library
        context = multiprocessing.get_context("spawn")
        self.library = library
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=target, daemon=True, args=(*args, theirs))
        self.process.start()
        theirs.close()

    def __call__(self, name, *args):
        """The worker's answer to (name, *args); exits with its traceback if it fails."""
        try:
            self.connection.send((name, *args))
            status, result = self.connection.recv()
        except (EOFError, OSError):  # the worker died, most likely while starting
            self.process.join()
            sys.exit(f"error: the {self.library} worker process ended with exit code "
                     f"{self.process.exitcode}; its own error, if any, is printed above")
        if status != "ok":
            sys.exit(f"error: the {self.library} worker failed:\n{result}")
        return result

    def close(self):
        """Stop the worker, if it still runs, and wait for it."""
        try:
            self.connection.send(None)
        except OSError:  # it has already ended
            pass
        self.process.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
