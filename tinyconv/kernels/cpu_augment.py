"""Numba CPU kernels of the data pipeline's distortions: affine and elastic warps of a batch.

Unlike the layers' kernels these run on the host before a batch reaches the network, on
batch-first canvases as data.py makes them: (N,S,S) float32, S the canvas side (32 for
LeNet-5's input). The contract is the layers' otherwise: outputs first, kernels allocate and
return nothing, float32 throughout, deterministic across runs and thread counts (a prange
iteration owns one sample, or one row, of what it writes).

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


@njit(**_JIT)
def gaussian_blur(out, tmp, inp, weights):
    # inp (S,S,M) -> out (S,S,M): the separable blur by weights (K,), K odd, centred, zero
    # beyond the edges, of each of the M maps (batch-last: every tap is one long
    # multiply-add over M); rows first into tmp (S,S,M), then columns
    S, _, M = inp.shape
    K = weights.size
    R = K // 2
    for y in prange(S):
        for x in range(S):
            into = tmp[y, x]
            into[:] = _ZERO
            for k in range(max(0, R - x), min(K, S + R - x)):
                w, line = weights[k], inp[y, x + k - R]
                for i in range(M):
                    into[i] += w * line[i]
    for y in prange(S):
        for x in range(S):
            into = out[y, x]
            into[:] = _ZERO
            for k in range(max(0, R - y), min(K, S + R - y)):
                w, line = weights[k], tmp[y + k - R, x]
                for i in range(M):
                    into[i] += w * line[i]


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
def warp_bilinear(out, src, matrices, fields):
    # src (N,S,S), matrices (N,2,3), fields (S,S,N,2) (each sample's dx, dy) or (S,S,0,2) for
    # none -> out (N,S,S). Branch-free: a neighbour outside the canvas is read clamped and
    # weighted 0
    N, S, _ = src.shape
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
                ix, iy = int(x0), int(y0)
                ax, bx = _clamped(ix, S), _clamped(ix + 1, S)
                ay, by = _clamped(iy, S), _clamped(iy + 1, S)
                # each neighbour's weight, 0 where it lies outside
                w00 = (_ONE - wx) * (_ONE - wy) * _inside(ix, S) * _inside(iy, S)
                w01 = wx * (_ONE - wy) * _inside(ix + 1, S) * _inside(iy, S)
                w10 = (_ONE - wx) * wy * _inside(ix, S) * _inside(iy + 1, S)
                w11 = wx * wy * _inside(ix + 1, S) * _inside(iy + 1, S)
                out[n, y, x] = (w00 * src[n, ay, ax] + w01 * src[n, ay, bx]
                                + w10 * src[n, by, ax] + w11 * src[n, by, bx])


@njit(**_HELPER)
def _clamped(i, size):
    return min(max(i, 0), size - 1)


@njit(**_HELPER)
def _inside(i, size):
    return _ONE if 0 <= i < size else _ZERO
