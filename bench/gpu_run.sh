#!/usr/bin/env bash
# Everything that needs a GPU, in one call: install gradcore, run the whole test suite with the
# `cuda` tests, run the GPU benchmarks, and leave the results in bench/results/ and in $OUT.
#
# For a session whose task is lent a GPU (the device tool's README says how to call it).
# Once, here in the repo root, fetch the pure-Python wheels the GPU image lacks (it has CuPy,
# NumPy, pytest, hypothesis, scikit-learn, matplotlib and tqdm, and no network; /.whl/ is in
# .gitignore):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl \
#       array-api-compat==1.16.0 array-api-strict==2.6.1 autograd==1.9.1
#
# Then call the device tool's run with
#   command: bash bench/gpu_run.sh      carry: [".whl"]      timeout_s: 600
# and copy what comes back (run.log, pytest*.log, pytest*.xml, results/*) into bench/results/ to
# commit it. Every path here is inside the repository (or $OUT).
#
# Time limits: CuPy compiles each new kernel with NVRTC on first use (about 0.1 s each) and the
# image starts with an empty kernel cache, so the ~890 cuda cases alone may spend 90 s or more
# compiling. Each pytest run is stopped with SIGINT at its limit: pytest then still prints its
# summary and writes its JUnit XML, so a run that is cut short reports what it did. The limits
# (240 + 60 s of tests, 60 + 150 s of benchmarks) keep the whole script inside the device
# tool's 600 s per call, with room for the install.
set -uo pipefail
cd "$(dirname "$0")/.."
# The real GPU, never the simulated device (gradcore.backends.cudasim): its figures are no figures.
unset GRADCORE_SIMULATE_CUDA
OUT=${OUT:-bench/results/gpu-run}
mkdir -p "$OUT/results" bench/results
export PYTHONUNBUFFERED=1
log() { echo "[gpu_run] $*" | tee -a "$OUT/run.log"; }
status=0

log "install"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target build/gpu-site .whl/*.whl || exit 1
    export PYTHONPATH=$PWD/build/gpu-site
fi
python3 -m pip install -q --no-build-isolation --no-deps -e . || exit 1

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import cupy; print('cupy', cupy.__version__, 'CUDA runtime',
        cupy.cuda.runtime.runtimeGetVersion())"
    python3 -c "import gradcore as gc; print('devices', gc.available_devices())"
    python3 -c "import gradcore as gc; gc.array(1.0, device='cuda')"  # the probe's reason
    python3 -m gradcore info | grep '^device cuda'  # names the GPU
} 2>&1 | tee -a "$OUT/run.log"

# run_pytest NAME LIMIT_S ARGS...: pytest under a SIGINT time limit, log and JUnit XML in $OUT
run_pytest() {
    local name=$1 limit=$2
    shift 2
    log "pytest $* (limit ${limit} s)"
    timeout -s INT -k 30 "$limit" python3 -m pytest -q -p no:cacheprovider -ra --durations=10 \
        --junitxml="$OUT/$name.xml" "$@" 2>&1 | tee "$OUT/$name.log" | tail -40 | tee -a "$OUT/run.log"
    local code=${PIPESTATUS[0]}
    [ "$code" -eq 124 ] || [ "$code" -eq 130 ] && log "$name: stopped at its ${limit} s limit"
    [ "$code" -eq 0 ] || status=1
}

# The GPU's own tests first, then the rest of the suite (which CPU-only CI also runs).
run_pytest pytest-cuda 240 -m cuda
run_pytest pytest-rest 60 -m "not cuda"

log "python -m bench.sigmoid --device cuda"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -cs 'A-Za-z0-9' '-')
timeout 60 python3 -m bench.sigmoid --device cuda --json "$OUT/results/sigmoid-cuda-${gpu%-}.json" \
    2>&1 | tee -a "$OUT/run.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# The GPU table (bench/gpu.py: the fused sigmoid as a share of memory bandwidth, the jitted step
# against PyTorch CUDA eager and the CuPy floor at batch 32 to 4096) and the memory suite; the mlp
# suite starts a process per peer and times each again alone, too long for this call's limit.
log "python -m bench --device cuda --suite gpu memory"
timeout 150 python3 -m bench --device cuda --suite gpu memory --out "$OUT/results" 2>&1 | tail -60 \
    | tee -a "$OUT/run.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

cp "$OUT"/results/* bench/results/ 2>/dev/null
log "done, exit status $status; results in $OUT and bench/results/"
exit $status
