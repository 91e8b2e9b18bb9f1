#!/usr/bin/env bash
# The whole GPU check of issue #3 as one script, for the lent H200 (../shared/device/README.md).
# Here:  ../shared/device/prepare-wheels.sh      (fills .whl/ with this project's wheel and pydantic's)
# There: run(command="bash benches/gpu_session.sh", carry=[".whl"], timeout_s=540)
# It installs the wheels, runs tests/test_gpu.py, then benches/gpu_load.py; reports land in $OUT.
set -uo pipefail
out=${OUT:-/tmp/eqx_msg_gpu_out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || { echo "gpu_session: installing .whl/ failed" >&2; exit 2; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -c "import jax, eqx_msg; print('devices:', jax.devices(), '| eqx_msg from', eqx_msg.__file__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
# -p no:cacheprovider: the checkout there need not be writable; the GPU tests' report goes to $out too.
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.txt"
tests=${PIPESTATUS[0]}
timeout 330 python3 benches/gpu_load.py --out "$out" 2>&1 | tee "$out/gpu_load.log"
bench=${PIPESTATUS[0]}
echo "gpu_session: tests rc=$tests, bench rc=$bench"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
