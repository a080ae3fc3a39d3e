"""Which chat template a base model is served and trained with (one answer for both sides).

The bundled SmolLM2's own template knows no tools, so loopgate ships `chatml_tools.jinja` for it:
it renders plain conversations exactly as the model's template does and tool use in the shape
vLLM's `hermes` tool parser reads. The engine is started with it and the trainer sets it on its
tokenizer, so a tool-call example is learned exactly as the engine renders and parses it. Any
other model keeps its own template (None).
"""

from __future__ import annotations

import json
from pathlib import Path

from store.settings import BUNDLED_MODEL, Settings

TEMPLATES = Path(__file__).parent / "chat_templates"
BUNDLED_TEMPLATE = TEMPLATES / "chatml_tools.jinja"
MANIFEST = "loopgate-model.json"  # replicas.base_model.MANIFEST (not imported: no cycle)
_MAX_HOPS = 4


def template_for(settings: Settings | None, model_dir: Path) -> Path | None:
    """The template for the base in `model_dir`, as `engine_chat_template` says: 'auto' is
    loopgate's for the bundled model (the settings name it, or, without settings, the folder
    was prepared from the bundled GGUF, directly or through an NF4-rounded copy) and the model's
    own (None) for any other; 'model' is always the model's own; anything else is a file."""
    choice = settings.engine_chat_template if settings is not None else "auto"
    if choice == "model":
        return None
    if choice != "auto":
        return Path(choice)
    if settings is not None and settings.base_model == BUNDLED_MODEL:
        return BUNDLED_TEMPLATE
    return BUNDLED_TEMPLATE if is_bundled(model_dir) else None


def is_bundled(model_dir: Path) -> bool:
    """Whether a prepared folder's manifest traces back to the bundled GGUF (only the bundled
    model is prepared from a GGUF; an NF4 copy's manifest names the folder it was made from)."""
    folder = model_dir
    for _ in range(_MAX_HOPS):
        try:
            source = json.loads((folder / MANIFEST).read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            return False
        if not isinstance(source, str):
            return False
        if source.endswith(".gguf"):
            return True
        folder = Path(source)
    return False


def template_text(settings: Settings | None, model_dir: Path) -> str | None:
    """`template_for`'s file, read (None: keep the model's own)."""
    path = template_for(settings, model_dir)
    return path.read_text() if path is not None else None
