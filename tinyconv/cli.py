"""What the commands share: the compile notice and the thread count."""

import sys
import threading

import numba

COMPILE_NOTICE = ("tinyconv: compiling the kernels for this machine (the first run takes about "
                  "20 s; Numba caches them for later runs)")


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
