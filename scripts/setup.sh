#!/usr/bin/env bash
# Create (or reuse) .venv and install quantfid with every extra. Idempotent; safe to run on a fresh clone.
# torch is pinned to 2.13.0 in pyproject.toml: on these machines that is the CPU wheel lying on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# System packages for team mode (PostgreSQL) and the MLflow UI screenshot (Chromium): only the tests need them, so
# only QUANTFID_SYSTEM_DEPS=1 (scripts/test.sh sets it) installs them; the main job (scripts/main.sh) does not.
if [ "${QUANTFID_SYSTEM_DEPS:-0}" = "1" ]; then
  bash scripts/install_system_deps.sh
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# llama-cpp-python (the gguf extra) has no wheel on PyPI and compiles llama.cpp (5-6 minutes on 2 idle cores, 22 under
# load). Its default build targets the build machine's CPU (GGML_NATIVE) and segfaults in llama_decode on quantized
# files on some CPUs (AVX-512/AMX here): build a portable wheel (any x86-64 CPU with AVX2) once and install from it.
# The wheel is kept in a per-user cache named after the version and the build flags (like pip's own wheel cache,
# which cannot tell a native build from a portable one), so a second clone or CI on the same machine reuses it;
# QUANTFID_WHEEL_DIR overrides the place.
LLAMA_CPP_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
flags_id=$(printf '%s' "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
WHEEL_DIR=${QUANTFID_WHEEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/quantfid/wheels/llama-cpp-python-${LLAMA_CPP_VERSION}-${flags_id}}
if ! ls "$WHEEL_DIR"/llama_cpp_python-${LLAMA_CPP_VERSION}-*.whl >/dev/null 2>&1; then
  echo "building a portable llama-cpp-python ${LLAMA_CPP_VERSION} wheel into $WHEEL_DIR (5-22 minutes on 2 cores)"
  mkdir -p "$WHEEL_DIR.tmp"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" \
    .venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps --no-cache-dir -w "$WHEEL_DIR.tmp" \
    "llama-cpp-python==${LLAMA_CPP_VERSION}" 2>&1 | grep -v "^WARNING: Location" || true
  rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"  # only a finished build is ever found
fi
export PIP_FIND_LINKS=$WHEEL_DIR  # pip takes the portable wheel instead of building a native one
stamp=.venv/.quantfid-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ mlflow_plugins/pyproject.toml -nt "$stamp" ] \
    || [ scripts/setup.sh -nt "$stamp" ] || ! .venv/bin/python -c "import llama_cpp, gguf" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  # quantfid's MLflow plugins are their own distribution (mlflow_plugins/): install them first, then quantfid.
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ./mlflow_plugins -e ".[all]" 2>&1 \
    | grep -v "^WARNING: Location" || true
  # hydra-ray-launcher 1.2.2 pins cloudpickle<3 (joblib 1.6 needs 3.x; the launcher runs fine with 3.x) and asks for
  # boto3 and ray[default], which only its AWS launcher uses: install it alone; `ray` itself comes from [launchers].
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "hydra-ray-launcher==1.2.2" 2>&1 | grep -v "^WARNING: Location" || true
  # gptqmodel 7.7.0 (GPTQ on CPU and CUDA) ships an sdist whose metadata asks for torch>=2.14.1 and pyarrow>=26; it
  # runs with the pinned torch 2.13.0: install it and its small deps alone (docs/quant.md).
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "gptqmodel==7.7.0" "pypcre==0.6.4" \
    "tokenicer==0.0.14" "logbar==0.4.15" "device-smi==0.5.7" "defuser==0.0.28" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, quantfid, quantfid_mlflow, ray, hydra_plugins.hydra_ray_launcher, gptqmodel, gguf, llama_cpp; assert torch.__version__.startswith('2.13.0'), torch.__version__"
  touch "$stamp"
fi
