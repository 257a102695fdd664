#!/usr/bin/env bash
# The GPU check of issue 11, for a session that is lent a GPU: about 8 minutes on one H200.
#
#   benchmarks/gpu_check.sh [FOLDER]        # figures to FOLDER (default: $OUT, else ./gpu-check)
#
# 1. the CUDA tests (pytest -m cuda), 2. extraction throughput on the device against the best
# bare loop (resnet50 and ViT-B/16 at 224 px, bf16; channels_last for the CNN; weights=None,
# synthetic data), 3. featwrap's copy-on-write snapshots on the device (benchmarks/cow.py).
# A failing step is recorded in summary.txt and the next one still runs; the exit status is
# that of the first failure. At most 8 files are written (what a device run sends back).
#
# Settings (environment): DEVICE (cuda), PYTHON (default: .venv/bin/python if present, else
# python3), N (images per run, 1024), SIZE (224), ROUNDS (5), WORKERS (8), BATCH (64),
# MODELS ("resnet50 vit_b_16"), COW_MIB (256), TESTS (1: run the tests; 0: skip them).
# A test file whose imports are missing there (grad-cam, say) is reported in cuda-tests.log and
# makes the step fail, but the CUDA tests of the other files still run.
# On the CPU with tiny sizes it checks itself: DEVICE=cpu N=8 SIZE=32 ROUNDS=1 WORKERS=0
# BATCH=4 MODELS=resnet18 COW_MIB=1 TESTS=0 benchmarks/gpu_check.sh /tmp/check
set -uo pipefail
cd "$(dirname "$0")/.."

folder=${1:-${OUT:-gpu-check}}
mkdir -p "$folder"
device=${DEVICE:-cuda}
if [ -n "${PYTHON:-}" ]; then py=$PYTHON
elif [ -x .venv/bin/python ]; then py=.venv/bin/python
else py=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
summary="$folder/summary.txt"
status=0

step() {  # step NAME SECONDS LOG COMMAND...: run it with a time limit and its output to LOG
    local name=$1 limit=$2 log=$3 start rc
    shift 3
    start=$(date +%s)
    timeout "$limit" "$@" > "$log" 2>&1
    rc=$?
    echo "$name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$summary"
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

{
    echo "gpu_check on $device with $py, $(date -u '+%Y-%m-%d %H:%M UTC')"
    "$py" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "gpus", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
} > "$summary" 2>&1

if [ "${TESTS:-1}" = 1 ]; then
    step "pytest -m cuda" 180 "$folder/cuda-tests.log" "$py" -m pytest -m cuda -q \
        -p no:cacheprovider --continue-on-collection-errors --junitxml "$folder/cuda-tests.xml" \
        tests/
    tail -n 3 "$folder/cuda-tests.log" >> "$summary"
fi

step "throughput" 330 "$folder/throughput.log" "$py" -m benchmarks.throughput --device "$device" \
    --models ${MODELS:-resnet50 vit_b_16} --settings bf16 bf16+cl --size "${SIZE:-224}" \
    --n "${N:-1024}" --rounds "${ROUNDS:-5}" --workers "${WORKERS:-8}" \
    --batch-size "${BATCH:-64}" --folder "$folder" --json "$folder/throughput.json" \
    --markdown "$folder/throughput.md"
cat "$folder/throughput.md" >> "$summary" 2>/dev/null

step "copy-on-write" 60 "$folder/cow.log" "$py" -m benchmarks.cow --device "$device" \
    --mib "${COW_MIB:-256}" --json "$folder/cow.json"

echo "exit $status" >> "$summary"
exit "$status"
