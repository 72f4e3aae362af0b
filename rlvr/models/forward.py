"""The policy forward at response positions: per-token log-probs (and entropies) of given responses.

Shared by the learner (old, reference and current log-probs) and the Hugging Face engine (the sampler's
log-probs, recomputed in one parallel pass after ``generate`` instead of keeping every step's
[batch x vocab] logits). Only response positions reach the LM head, through the chunked
:func:`rlvr.kernels.token_logprobs`: the full [tokens x vocab] fp32 logits never exist.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.kernels import token_logprobs


def response_logprobs(
    model,
    prompt_tokens: Tensor,  # [n,P] left-padded
    prompt_mask: Tensor,  # [n,P]
    response_tokens: Tensor,  # [n,T] right-padded
    response_mask: Tensor,  # [n,T]
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_hidden: bool = False,
) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, Tensor]:
    """``(logp [n,T], entropy [n,T] or None)``, zero where masked; with ``with_hidden`` also the last hidden
    states at the response positions ``[n,T,H]`` (those that predict each response token)."""
    ids = torch.cat([prompt_tokens, response_tokens], dim=1)
    attention = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)  # as generate numbers left-padded rows
    # use_cache=False: the model's config may ask for a KV cache, which a single pass would fill for nothing.
    hidden = model.base_model(input_ids=ids, attention_mask=attention, position_ids=positions,
                              use_cache=False).last_hidden_state
    width = prompt_tokens.shape[1]
    # The hidden state at position p predicts token p+1: responses are predicted from P-1 .. P+T-2.
    hidden = hidden[:, width - 1 : width - 1 + response_tokens.shape[1]]
    valid = response_mask.bool()
    weight = model.get_output_embeddings().weight
    logp_flat, entropy_flat = token_logprobs(
        hidden[valid], weight, response_tokens[valid], temperature, return_entropy=with_entropy
    )
    logp = torch.zeros(valid.shape, dtype=logp_flat.dtype, device=logp_flat.device).masked_scatter(valid, logp_flat)
    entropy = None
    if entropy_flat is not None:
        entropy = torch.zeros(valid.shape, dtype=entropy_flat.dtype, device=entropy_flat.device).masked_scatter(
            valid, entropy_flat)
    if with_hidden:
        return logp, entropy, hidden
    return logp, entropy
