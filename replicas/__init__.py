"""The vLLM replicas: the pool the gateway and the adapters talk to, the embedded replica's
supervisor, and the base model it serves (prepared from the bundled GGUF, NF4-rounded for
QLoRA)."""
