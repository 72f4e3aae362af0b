"""The embedded tiny model: a character-level Llama built and warm-started locally, cached on disk.

No download is possible on a fresh CPU machine, and none is needed: :func:`ensure_tiny_model` builds a
~1M-parameter Llama-style model (Hugging Face ``LlamaForCausalLM``, so the checkpoints load in
transformers and vLLM alike) with a character-level tokenizer, and warm-starts it with a short supervised
phase on the arithmetic task (:mod:`rlvr.data.tasks.arithmetic`). The warm start is deliberately short:
the model ends up right on a fair share of problems and wrong on the rest, which is what gives RL a
signal to learn from. Everything is seeded, so the same version builds the same weights on every machine
(up to the float determinism of the CPU kernels).

The result is cached in ``$RLVR_CACHE_DIR/tiny/<key>`` (default ``~/.cache/rlvr``); the key hashes every
setting below, so changing one builds a new model rather than reusing a stale one. The default model ships with
the package (``rlvr/models/tiny_model``, 3.5 MB, written by ``scripts/build_tiny_model.py``): a fresh machine copies
it into the cache instead of spending minutes on the warm start.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlvr.data.tasks import arithmetic

log = logging.getLogger(__name__)

NAME = "tiny"
SHIPPED = Path(__file__).with_name("tiny_model")  # the default spec's build, in the package
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
# Every printable ASCII character plus newline and tab: enough for the tiny task, its hints and the
# benchmarks' prompts (anything else becomes <unk>).
CHARACTERS = [chr(i) for i in range(32, 127)] + ["\n", "\t"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}{% endfor %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Architecture and warm start of the tiny model. Every field enters the cache key."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 128
    warmup_steps: int = 1500
    warmup_batch_size: int = 128
    warmup_lr: float = 3e-3
    # The fraction of warm-start answers followed by a few junk characters before EOS. The warm-started
    # model imitates this sloppiness: sampled at temperature 1 it often rambles past a right answer (which
    # then grades wrong), as base models fail to stop; RL's first gains are learning to stop.
    warmup_ramble: float = 0.5
    warmup_label_smoothing: float = 0.0
    # The fraction of warm-start problems shown with a hint (``8?|47+38=``: a level of the task's hint
    # ladder), so that the model can use Scaf-GRPO's hints as a base LLM can use written ones.
    warmup_hint_frac: float = 0.25
    seed: int = 1234
    version: int = 1

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def cache_root() -> Path:
    return Path(os.environ.get("RLVR_CACHE_DIR", Path.home() / ".cache" / "rlvr"))


def build_tokenizer():
    """A character-level tokenizer, loadable with ``PreTrainedTokenizerFast`` (keeps whitespace tokens)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    # BPE with no merges splits a string into characters and maps unknown ones to <unk>.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK,
        model_max_length=TinySpec.max_positions,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(spec: TinySpec, vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=1,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def _sft_batch(tokenizer, batch: list[arithmetic.Problem], ramble: float, rng: random.Random, hint_frac: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[hint|]prompt + answer [+ junk] + EOS`` ids and labels that train only the response."""
    rows, labels = [], []
    for p in batch:
        problem = p.problem
        if rng.random() < hint_frac:  # a hint pattern as Scaf-GRPO's search shows them
            problem = arithmetic.HINT_TEMPLATE.format(hint=arithmetic.warmup_hint(p.answer, rng), problem=p.problem)
        prompt = tokenizer(problem, add_special_tokens=False).input_ids
        text = p.answer
        if rng.random() < ramble:
            text += " " + "".join(rng.choice("0123456789+-*=") for _ in range(rng.randint(2, 4)))
        answer = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(l)] = torch.tensor(l)
    return ids, lab


def warm_start(model, tokenizer, spec: TinySpec) -> list[float]:
    """Short supervised phase on the train split; returns the loss curve (one value per 50 steps)."""
    data = arithmetic.problems("train", spec.warmup_steps * spec.warmup_batch_size, seed=spec.seed)
    random.Random(spec.seed).shuffle(data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.warmup_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / spec.warmup_steps))
    )
    model.train()
    curve = []
    rng = random.Random(spec.seed + 1)
    for step in range(spec.warmup_steps):
        chunk = data[step * spec.warmup_batch_size : (step + 1) * spec.warmup_batch_size]
        ids, labels = _sft_batch(tokenizer, chunk, spec.warmup_ramble, rng, spec.warmup_hint_frac)
        logits = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long()).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
            ignore_index=-100, label_smoothing=spec.warmup_label_smoothing,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == spec.warmup_steps - 1:
            curve.append(round(loss.item(), 4))
    model.eval()
    return curve


def ensure_tiny_model(spec: TinySpec | None = None) -> Path:
    """The directory of the warm-started tiny model in Hugging Face format; builds it on first use.

    Safe to call from several processes at once: one builds under a file lock, the others wait, and the
    directory appears by an atomic rename, so a crash mid-build never leaves a half model behind.
    """
    spec = spec or TinySpec()
    root = cache_root() / NAME
    target = root / spec.key()
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{spec.key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists():
            return target
        if shipped_key() == spec.key():
            staging = root / f".{spec.key()}.tmp-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(SHIPPED, staging)
            os.replace(staging, target)
            return target
        started = time.perf_counter()
        log.info("building the tiny model (first use, about 3 minutes on 2 cores; cached in %s)", target)
        from rlvr.models.loading import quiet_transformers

        quiet_transformers()
        with torch.random.fork_rng():
            tokenizer = build_tokenizer()
            model = build_model(spec, len(tokenizer))
            curve = warm_start(model, tokenizer, spec)
        staging = root / f".{spec.key()}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        meta = {"spec": asdict(spec), "warmup_loss": curve, "build_seconds": time.perf_counter() - started}
        (staging / "rlvr_tiny.json").write_text(json.dumps(meta, indent=2))
        os.replace(staging, target)
        return target


def shipped_key() -> str | None:
    """The cache key of the model that ships with the package (None if it is missing)."""
    try:
        return TinySpec(**json.loads((SHIPPED / "rlvr_tiny.json").read_text())["spec"]).key()
    except (OSError, KeyError, TypeError, ValueError):
        return None
