#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (`make bench-gpu`):
#   1. the triton kernel's tests (tests/test_vil.py -k cuda; skipped elsewhere);
#   2. benchmarks/vil_scaling.py --device cuda: chunkwise, parallel and triton rows, and the triton block's output and
#      input-gradient differences to the parallel form (triton_max_abs[_grad]_diff_vs_parallel);
#   3. benchmarks/train_step.py --device cuda --paper-sizes: one train step of every network at the paper's patches
#      (2D 320x320 batch 12, 3D 48x160x224 batch 2), bf16 autocast;
#   4. benchmarks/paper_path.py --device cuda: every method of experiments/gpu_paper.yaml through nnUNetv2_train
#      (nnU-Net's defaults: AMP; compile off unless nnUNet_compile=1) for 2 epochs of 5 iterations at the paper's
#      configurations on the 2D and 3D phantoms, then nnUNetv2_predict and our evaluation: one row per method, ok or
#      failed with the error, step time and peak memory. It answers "does the paper path run".
# Usage: benchmarks/gpu_checks.sh [OUT_DIR]   (default benchmarks/results; the interpreter: $PY, default
# .venv/bin/python, else python3). Writes OUT_DIR/gpu_tests.log, vil_scaling_cuda.json, train_step_cuda_paper.json,
# paper_path_cuda.json and paper_path.log; each JSON only when its run succeeds (paper_path_cuda.json also
# when a method failed: the failure is its content). Exit status 0 when all succeed, 1 when one failed, 2 without a
# GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
out=${1:-benchmarks/results}
mkdir -p "$out"
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_checks: $PY sees no CUDA device; these checks need a GPU" >&2
    exit 2
fi
failed=0
run_json() {  # run_json NAME COMMAND...: COMMAND's stdout to OUT_DIR/NAME, only if it succeeds
    local name=$1
    shift
    echo "gpu_checks: $* -> $out/$name" >&2
    if "$@" > "$out/.$name.tmp"; then
        mv "$out/.$name.tmp" "$out/$name"
    else
        rm -f "$out/.$name.tmp"
        echo "gpu_checks: FAILED: $*" >&2
        failed=1
    fi
}
"$PY" -m pytest -q -p no:cacheprovider tests/test_vil.py -k cuda 2>&1 | tee "$out/gpu_tests.log" || failed=1
run_json vil_scaling_cuda.json "$PY" benchmarks/vil_scaling.py --json --device cuda
run_json train_step_cuda_paper.json "$PY" benchmarks/train_step.py --json --device cuda --paper-sizes
echo "gpu_checks: benchmarks/paper_path.py -> $out/paper_path_cuda.json" >&2
work=$(mktemp -d)  # nnU-Net folders of the phantom runs (checkpoints): not kept
"$PY" benchmarks/paper_path.py --json --device cuda --out "$work" > "$out/.paper_path.tmp"
status=$?
cp "$work/paper_path.log" "$out/paper_path.log" 2>/dev/null
rm -rf "$work"
if [ -s "$out/.paper_path.tmp" ]; then mv "$out/.paper_path.tmp" "$out/paper_path_cuda.json"; else rm -f "$out/.paper_path.tmp"; fi
[ "$status" -eq 0 ] || { echo "gpu_checks: paper path: a method failed (see $out/paper_path_cuda.json)" >&2; failed=1; }
exit $failed
