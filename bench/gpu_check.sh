#!/usr/bin/env bash
# The CUDA backend on a real GPU, in one go (about 5 minutes): bash bench/gpu_check.sh [OUT]
#
# For a bare machine with an NVIDIA GPU, its driver and Python 3.10+. Installs tinyconv with the
# test extra and the CUDA toolkit extra that fits the driver (cuda13 for a CUDA 13 driver, else
# cuda12), from the package index or, with WHEELS=DIR, from that folder of wheels alone (a
# machine without internet); torch must be a CUDA build for the comparisons (TORCH_WHEEL=FILE
# or one in WHEELS). Then, each step's output in OUT (default gpu-check/):
#   nvidia-smi.txt        the GPU and driver
#   install.txt           what pip installed
#   backend.txt           require_cuda's verdict and a first kernel launch
#   gpu-tests.xml/.txt    the gpu-marked tests: every LeNet-5 kernel against the CPU's,
#                         determinism, twenty training steps against the CPU
#   train.txt/.json       bench/train.py --device cuda: a training step and inference, tinyconv
#                         against torch eager on the same GPU
#   kernels.txt/.json     bench/kernels.py --device cuda: per op, tinyconv against torch
#   profile.txt           torch.profiler's per-kernel table of 10 training steps of each
# A step that fails is recorded in OUT/failed.txt and the others still run; the exit status is
# the number of failed steps.
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
out=$(cd "$out" && pwd)  # paths given relative to where the script was started
[ -n "${WHEELS:-}" ] && WHEELS=$(cd "$WHEELS" && pwd)
[ -n "${TORCH_WHEEL:-}" ] && TORCH_WHEEL=$(realpath "$TORCH_WHEEL")
cd "$(dirname "$0")/.."
: > "$out/failed.txt"
step() {  # step NAME TIMEOUT_S COMMAND...: run it, its output to OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    if ! timeout "$limit" "$@" > "$out/$name.txt" 2>&1; then
        echo "$name" >> "$out/failed.txt"
        echo "   failed: see $out/$name.txt"
    fi
    tail -n 3 "$out/$name.txt"
}

step nvidia-smi 30 nvidia-smi
driver_cuda=$(grep -o "CUDA Version: [0-9]*" "$out/nvidia-smi.txt" | grep -o "[0-9]*$" || echo 12)
extra=cuda12
[ "${driver_cuda:-12}" -ge 13 ] && extra=cuda13
pip_from=()
[ -n "${WHEELS:-}" ] && pip_from=(--no-index --find-links "$WHEELS")
step install 600 python -m pip install ${pip_from[@]+"${pip_from[@]}"} ${TORCH_WHEEL:+"$TORCH_WHEEL"} \
    -e ".[test,$extra]"
step backend 120 python -c "
import numpy as np, tinyconv
model = tinyconv.LeNet5(device='cuda')
print('require_cuda: ok;', model.forward(np.zeros((2, 1, 32, 32), np.float32)).shape)"
step gpu-tests 240 python -m pytest tests/test_cuda.py -m gpu -q -p no:cacheprovider \
    --junitxml="$out/gpu-tests.xml"
step train 240 python bench/train.py --device cuda --skip-subprocess --json "$out/train.json"
step kernels 300 python bench/kernels.py --device cuda --rounds 10 --json "$out/kernels.json" \
    --profile "$out/profile.txt"
failed=$(wc -l < "$out/failed.txt")
echo "done: $failed failed step(s); the results are in $out/"
exit "$failed"
