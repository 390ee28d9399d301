#!/usr/bin/env bash
# The GPU run of issues 4 and 15, as one command on a lent GPU machine (nvidia-h100-x1 or nvidia-h200).
#
# That machine's image ('cuda') has python3 3.12 with CuPy (cupy-cuda13x 14.x), PyTorch (CUDA 13),
# numpy, pytest, threadpoolctl and matplotlib, but no network and no array-api-compat/array-api-strict.
# Prepare here, once, where pip can reach PyPI (both are small pure-Python wheels):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl "array-api-compat==1.16.0" "array-api-strict==2.6.1"
#
# (.whl/ is in .gitignore.) Then, through the device tool, with carry [".whl"]; each stage fits in one
# 10-minute call:
#
#   bash benchmarks/run_gpu.sh count    # issue 15: ops per step (GPU plan, array_api_strict) beside the CuPy
#                                       # step time, us per op (~2 min); the launch-budget model's test
#   bash benchmarks/run_gpu.sh test     # pytest -m gpu, then xpcnn parity numpy vs cupy (float64 and float32)
#   bash benchmarks/run_gpu.sh bench    # xpcnn bench --backends numpy,cupy --compare torch (JSON, plot, table)
#   bash benchmarks/run_gpu.sh count+test  # the two, in one call
#   bash benchmarks/run_gpu.sh all      # all three, if the call has the time
#
# A task now gets 15 minutes of device time for all its calls together (machine start included): run
# "count" and "test" in one call first (timeout_s ~420), then "bench" if time is left.
#
# Everything lands in $OUT (the device tool's folder that comes back), else benchmarks/gpu-out/.
# Afterwards: keep the measured JSON (never estimates) in benchmarks/, with the machine line from env.txt and the
# exact command below, add it to benchmarks/performance_page.py and regenerate docs/performance.md; the story of
# the run goes in a new dated file in benchmarks/history/.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:-all}
OUT=${OUT:-benchmarks/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=python3

# -- install: carried wheels, then xpcnn itself without dependencies --------------------------------
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PY -m pip install -q --no-deps --no-index --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
  echo "pip install --no-deps -e . failed (see install.log); running from the checkout instead"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  rm -f "$OUT/install.log"  # at most 8 files come back from $OUT
fi
XPCNN="$PY -m xpcnn"

# -- what we run on ------------------------------------------------------------------------------
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi failed"
  nproc
  $PY - <<'EOF'
import numpy, array_api_compat
print("numpy", numpy.__version__, "array-api-compat", array_api_compat.__version__)
try:
    import cupy
    print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
          "driver", cupy.cuda.runtime.driverGetVersion(), "devices", cupy.cuda.runtime.getDeviceCount())
except Exception as e:
    print("cupy unusable:", e)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
    print("torch unusable:", e)
EOF
  $XPCNN info
} 2>&1 | tee "$OUT/env.txt"

status=0
if [ "$STAGE" = count ] || [ "$STAGE" = all ] || [ "$STAGE" = count+test ]; then
  # ops per training step (counted on array_api_strict under the GPU plan: the path CuPy runs) vs wall time
  echo "\$ python benchmarks/opcount_vs_wall.py --backend cupy --models lenet,vgg-small --batch-sizes 32,128,512" \
    | tee "$OUT/opcount_vs_wall.txt"
  $PY benchmarks/opcount_vs_wall.py --backend cupy --models lenet,vgg-small --batch-sizes 32,128,512 2>&1 \
    | tee -a "$OUT/opcount_vs_wall.txt" || status=1
fi

if [ "$STAGE" = test ] || [ "$STAGE" = all ] || [ "$STAGE" = count+test ]; then
  # GPU tests (parity NumPy vs CuPy: every op, every layer, full steps, 50 steps; model.to; no host sync)
  $PY -m pytest -m gpu -rs -v -p no:cacheprovider tests/test_parity.py tests/test_gpu.py tests/test_bench.py 2>&1 \
    | tee "$OUT/pytest_gpu.log" || status=1
  {
    echo "\$ xpcnn parity --backends numpy,cupy --model lenet --dtype float64 --steps 50 --ops --quiet"
    $XPCNN parity --backends numpy,cupy --model lenet --dtype float64 --steps 50 --ops --quiet || status=1
    echo "\$ xpcnn parity --backends numpy,cupy --model vgg-small --dtype float32 --steps 50"
    $XPCNN parity --backends numpy,cupy --model vgg-small --dtype float32 --steps 50 || status=1
  } 2>&1 | tee "$OUT/parity.txt"
fi

if [ "$STAGE" = bench ] || [ "$STAGE" = all ]; then
  THREADS=$(nproc)
  CMD=(bench --backends numpy,cupy --compare torch --models lenet,vgg-small --batch-sizes 1,32,128,512
       --threads "$THREADS" --repeats 5 --warmup 2 --layers-batch 128 --json "$OUT/bench_gpu.json"
       --plot "$OUT/bench_gpu.png")
  echo "\$ xpcnn ${CMD[*]}" | tee "$OUT/bench_gpu.txt"
  $XPCNN "${CMD[@]}" 2>&1 | tee -a "$OUT/bench_gpu.txt" || status=1
  # the GPU's workspace default (512 MiB, chosen without a GPU) against the CPU's 16 MiB, vgg-small step
  BACKEND=cupy $PY benchmarks/workspace_gpu.py 2>&1 | tee "$OUT/workspace_gpu.txt" || status=1
fi
echo "run_gpu.sh $STAGE: exit $status (outputs in $OUT)"
exit $status
