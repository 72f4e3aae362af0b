"""Loading policy models: the embedded tiny model by name, or any Hugging Face causal LM by path or hub id."""

from __future__ import annotations

from pathlib import Path

import torch


def quiet_transformers() -> None:
    """No per-load progress bars or advisory warnings from transformers: rlvr shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def resolve_model_path(path: str) -> str:
    """``"tiny"`` -> the cached tiny model directory (built on first use); anything else unchanged."""
    if path == "tiny":
        from rlvr.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    return path


def load_tokenizer(path: str):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (Path(path) / "rlvr_tiny.json").exists():
        # transformers' auto classes may pick a tokenizer class that drops whitespace tokens.
        return PreTrainedTokenizerFast.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str = "float32", gradient_checkpointing: bool = False,
               trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
    )
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
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
