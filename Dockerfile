# quantfid: the organism study (sweep + analysis) in a container. CPU-only; no hub access needed.
#   docker build -t quantfid .
#   docker run --rm -v "$PWD/runs:/app/runs" quantfid                 # the main job; results in ./runs
#   docker run --rm -p 5000:5000 -v "$PWD/runs:/app/runs" quantfid \
#       .venv/bin/mlflow ui --backend-store-uri sqlite:////app/runs/mlflow.db --host 0.0.0.0   # browse them
FROM python:3.11-slim-bookworm

# DL3064: TOKENIZERS_PARALLELISM is a tokenizers switch, not a secret.
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

# git: provenance tags (quantfid.git_commit); postgresql-client: team mode from inside the container; gcc/g++:
# pypcre's C extension and gptqmodel's packing kernel (compiled on first use).
# DL3008: bookworm's own versions of two client tools; pinning them would break on every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git postgresql-client gcc g++ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch from the CPU index first: a bare `torch` pulls a multi-GB CUDA build.
RUN python -m venv .venv \
    && .venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY src ./src
COPY mlflow_plugins ./mlflow_plugins
COPY conf ./conf
COPY scripts ./scripts
# A plain (non-editable) install, as tests/test_packaging.py checks: the Hydra configs and the organism are package
# data, read from site-packages. quantfid's MLflow plugins are their own distribution (mlflow_plugins/).
# --no-deps (scripts/setup.sh says why): hydra-ray-launcher pins cloudpickle<3 and pulls boto3 for its AWS launcher;
# gptqmodel's metadata asks for torch>=2.14.1 but runs on the pinned 2.13.0. pypcre builds a C extension: needs gcc.
# llama-cpp-python (the gguf extra) compiles llama.cpp: a portable build (GGML_NATIVE=OFF, AVX2) into .whl/, so the
# image runs on any x86-64 CPU with AVX2, not only the build machine's (a native build segfaults on some CPUs).
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
        .venv/bin/pip wheel --no-deps -w .whl "llama-cpp-python==0.3.36"
RUN .venv/bin/pip install --find-links .whl ./mlflow_plugins ".[quant,gguf,bench,launchers,team]" \
    && .venv/bin/pip install --no-deps "hydra-ray-launcher==1.2.2" \
    && .venv/bin/pip install --no-deps "gptqmodel==7.7.0" "pypcre==0.6.4" "tokenicer==0.0.14" "logbar==0.4.15" \
        "device-smi==0.5.7" "defuser==0.0.28" \
    && touch .venv/.quantfid-installed

ENV PATH="/app/.venv/bin:${PATH}"
CMD ["bash", "scripts/main.sh"]
