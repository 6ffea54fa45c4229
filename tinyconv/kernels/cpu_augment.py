"""Numba CPU kernels of the data pipeline's distortions: affine and elastic warps of a batch.

Unlike the layers' kernels these run on the host before a batch reaches the network, on
batch-first canvases as data.py makes them: (N,S,S) float32, S the canvas side (32 for
LeNet-5's input). The contract is the layers' otherwise: outputs first, kernels allocate and
return nothing, float32 throughout, deterministic across runs and thread counts (a prange
iteration owns one sample, one row or one column of what it writes).

A warp reads, for each output pixel (y, x), the source at
    sx = m[0,0] x + m[0,1] y + m[0,2] + dx[y, x]
    sy = m[1,0] x + m[1,1] y + m[1,2] + dy[y, x]
(the fields batch-last, (S,S,N,2), since their blur runs over all of a batch's maps at once)
bilinearly, zero outside the canvas: m is the sample's inverse affine map (output to source)
and (dx, dy) its elastic displacement field (Simard et al. 2003: uniform noise in [-1, 1]
per pixel, cpu_blocks.elastic_noise beside the dropout mask's hash, smoothed by a Gaussian
of sigma, scaled by alpha).
"""

import numpy as np
from numba import njit, prange

from tinyconv.kernels.cpu import _HELPER, _JIT, _ONE, _ZERO

# The blur's taps are summed in their order, one rounding each (contract's FMA, no reassoc),
# so that five taps a pass give the bits of one tap a pass
_IN_ORDER = dict(fastmath={"contract"}, error_model="numpy", cache=True)
_TAPS = 5  # taps a pass over the maps (_add_five_taps's rows): 6 loads, 1 store, 5 FMAs


@njit(**{**_IN_ORDER, "parallel": True})
def gaussian_blur(out, tmp, inp, weights, scale):
    # inp (S,S,M) -> out (S,S,M): scale times the separable blur by weights (K,), K odd,
    # centred, zero beyond the edges, of each of the M maps (batch-last: every tap is one long
    # multiply-add over M); rows first into tmp (S,S,M), then columns. Each output sums its
    # taps inside the canvas in order; a column pass owns a column, so its S inputs stay in
    # cache while it makes the column's S outputs
    S = inp.shape[0]
    for y in prange(S):
        for x in range(S):
            _blur_point(tmp[y, x], inp, y, x, 0, 1, weights, _ONE)
    for x in prange(S):
        for y in range(S):
            _blur_point(out[y, x], tmp, y, x, 1, 0, weights, scale)


@njit(**_IN_ORDER)
def _blur_point(into, source, y, x, dy, dx, weights, scale):
    # source (S,S,M), weights (K,) -> into (M,) = scale * the sum over the taps k inside the
    # canvas, in order, of weights[k] * source[y + (k-R) dy, x + (k-R) dx] (R = K // 2): one
    # point of a blur along (dy, dx)
    S, K = source.shape[0], weights.size
    R, at = K // 2, y * dy + x * dx
    k, stop = max(0, R - at), min(K, S + R - at)
    into[:] = _ZERO
    while k + _TAPS <= stop:
        y0, x0 = y + (k - R) * dy, x + (k - R) * dx
        _add_five_taps(into, weights[k : k + _TAPS], source[y0, x0],
                       source[y0 + dy, x0 + dx], source[y0 + 2 * dy, x0 + 2 * dx],
                       source[y0 + 3 * dy, x0 + 3 * dx], source[y0 + 4 * dy, x0 + 4 * dx])
        k += _TAPS
    while k < stop:
        w, line = weights[k], source[y + (k - R) * dy, x + (k - R) * dx]
        for i in range(into.size):
            into[i] = into[i] + w * line[i]
        k += 1
    for i in range(into.size):
        into[i] = into[i] * scale


@njit(**{**_IN_ORDER, "inline": "always"})
def _add_five_taps(into, w, a, b, c, d, e):
    # w (5,), a..e (M,) -> into (M,) += w[0] a + w[1] b + ... + w[4] e, left to right: five
    # taps of a blur
    w0, w1, w2, w3, w4 = w[0], w[1], w[2], w[3], w[4]
    for i in range(into.size):
        into[i] = into[i] + w0 * a[i] + w1 * b[i] + w2 * c[i] + w3 * d[i] + w4 * e[i]


@njit(**_JIT)
def pad_shift_normalize(out, raw, shifts, table):
    # raw (N,H,W) uint8, shifts (N,2) integers (dy, dx), table (256,) -> out (N,S,S): raw
    # centred on the canvas (a border of (S-H)/2), moved by +dy rows and +dx columns, zero
    # outside, each value v then table[v], its normalised value as NumPy computes it (two
    # roundings; compiled code may fuse the multiply and the subtraction into one):
    # out[n,r,c] = table[raw[n, r - dy - top, c - dx - left]], table[0] outside
    N, S, _ = out.shape
    H, W = raw.shape[1], raw.shape[2]
    top, left = (S - H) // 2, (S - W) // 2
    for n in prange(N):
        dy, dx = shifts[n, 0], shifts[n, 1]
        for r in range(S):
            y = r - dy - top
            for c in range(S):
                x = c - dx - left
                out[n, r, c] = table[raw[n, y, x] if 0 <= y < H and 0 <= x < W else 0]


@njit(**_JIT)
def warp_bilinear(out, src, matrices, fields, scale, offset):
    # src (N,H,W) (uint8 digits or float32 canvases, H, W <= S) centred on the canvas (a
    # border of (S-H)/2, zero), matrices (N,2,3), fields (S,S,N,2) (each sample's dx, dy) or
    # (S,S,0,2) for none -> out (N,S,S) = the bilinear sample times scale minus offset: the
    # normalisation, after the zero fill (compiled code may fuse the two into one rounding).
    # Branch-free: a neighbour outside src is read clamped and weighted 0
    N, S, _ = out.shape
    H, W = src.shape[1], src.shape[2]
    top, left = (S - H) // 2, (S - W) // 2
    elastic = fields.shape[2] > 0
    for n in prange(N):
        m00, m01, m02 = matrices[n, 0, 0], matrices[n, 0, 1], matrices[n, 0, 2]
        m10, m11, m12 = matrices[n, 1, 0], matrices[n, 1, 1], matrices[n, 1, 2]
        for y in range(S):
            fy = np.float32(y)
            for x in range(S):
                fx = np.float32(x)
                sx = m00 * fx + m01 * fy + m02
                sy = m10 * fx + m11 * fy + m12
                if elastic:
                    sx += fields[y, x, n, 0]
                    sy += fields[y, x, n, 1]
                x0, y0 = np.floor(sx), np.floor(sy)
                wx, wy = sx - x0, sy - y0
                ix, iy = int(x0) - left, int(y0) - top  # in src
                ax, bx = _clamped(ix, W), _clamped(ix + 1, W)
                ay, by = _clamped(iy, H), _clamped(iy + 1, H)
                # each neighbour's weight, 0 where it lies outside
                w00 = (_ONE - wx) * (_ONE - wy) * _inside(ix, W) * _inside(iy, H)
                w01 = wx * (_ONE - wy) * _inside(ix + 1, W) * _inside(iy, H)
                w10 = (_ONE - wx) * wy * _inside(ix, W) * _inside(iy + 1, H)
                w11 = wx * wy * _inside(ix + 1, W) * _inside(iy + 1, H)
                value = (w00 * np.float32(src[n, ay, ax]) + w01 * np.float32(src[n, ay, bx])
                         + w10 * np.float32(src[n, by, ax]) + w11 * np.float32(src[n, by, bx]))
                out[n, y, x] = value * scale - offset


@njit(**_HELPER)
def _clamped(i, size):
    return min(max(i, 0), size - 1)


@njit(**_HELPER)
def _inside(i, size):
    return _ONE if 0 <= i < size else _ZERO
