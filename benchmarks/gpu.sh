#!/bin/bash
# The GPU checks in one go (docs/benchmarks.md section 9): the CUDA tests, then training and inference on the GPU.
#
#   bash benchmarks/gpu.sh [OUT]    # OUT: where the benchmark folders go (default: bench_output)
#
# Run it from the repository root with a Python whose torch is a CUDA build and which has amecam installed
# (pip install -e .); PYTHON names it (default python3). Each step runs even if an earlier one failed, and
# prints its status; the step clock says how long each took. Training is seed 4 at amecam train's defaults
# (20 + 8 epochs, 128 px, stem stride 1) on the benchmark cohort, scored on the CPU like the CPU runs.
set -u
PYTHON=${PYTHON:-python3}
OUT=${1:-bench_output}
export AMECAM_BENCH_OUTPUT=$OUT PYTHONUNBUFFERED=1
AMECAM="$(dirname "$(command -v "$PYTHON")")/amecam"
T0=$(date +%s)
step() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available())"

step "tests/test_cuda.py"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs; echo "status $?"

step "benchmark cohort"
"$AMECAM" synth "$OUT/cohort_seed0_n22" --n_cases 22 --seed 0 --workers "$(nproc)"; echo "status $?"

step "training on the GPU"
"$PYTHON" benchmarks/speed.py train --n_train 16 --epochs 20 --attention_epochs 8 --stem_stride 1 --image_size 128 \
    --pipelines amecam --train_seed 4 --device cuda --out "$OUT/train_cuda_true_default_128_seed4"; echo "status $?"

step "a bundle to time inference with (1 + 1 epochs on 4 cases)"
mkdir -p "$OUT/cohort_4"
for i in 0 1 2 3; do ln -sfn "$(cd "$OUT" && pwd)/cohort_seed0_n22/SYN_00$i" "$OUT/cohort_4/SYN_00$i"; done
if [ ! -f "$OUT/gpu_bundle/models/model.pt" ]; then
    "$AMECAM" train --data_dir "$OUT/cohort_4" --output_dir "$OUT/gpu_bundle" --epochs 1 --attention_epochs 1 --device cuda 2>&1 | tail -3
    echo "status ${PIPESTATUS[0]}"
fi

step "inference on the GPU"
"$PYTHON" benchmarks/speed.py infer --device cuda --repeats 3 --bundle "$OUT/gpu_bundle" --out "$OUT/infer_cuda"; echo "status $?"
step "done"
