"""The vision-language-action model: fused vision -> projector -> Llama -> head at the action queries.

Sequence layout per sample: ``[BOS] [IMG x N] [TEXT x n_i] [ACT x Q] [PAD ...]``. Each sample's
action queries follow its own last text token and padding goes to the end, so under causal
attention a sample's outputs do not depend on what else is in the batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaModel

from lapa.vla.projector import Projector
from lapa.vla.vision import FusedVisionEncoder, _get


def llama_config_from(llm_cfg: Any, vocab_size: int | None = None) -> LlamaConfig:
    """A LlamaConfig from the ``foundation.llm`` section (used when no local HF directory is given)."""
    config = LlamaConfig(
        vocab_size=int(vocab_size or _get(llm_cfg, "vocab_size")),
        hidden_size=int(_get(llm_cfg, "hidden_size")),
        intermediate_size=int(_get(llm_cfg, "intermediate_size")),
        num_hidden_layers=int(_get(llm_cfg, "num_hidden_layers")),
        num_attention_heads=int(_get(llm_cfg, "num_attention_heads")),
        num_key_value_heads=int(_get(llm_cfg, "num_key_value_heads")),
        max_position_embeddings=int(_get(llm_cfg, "max_position_embeddings")),
        rms_norm_eps=float(_get(llm_cfg, "rms_norm_eps", 1e-5)),
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    config._attn_implementation = _get(llm_cfg, "attn_implementation", "sdpa") or "sdpa"
    return config


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class VLAModel(nn.Module):
    """vision (SigLIP+DINOv2 via timm, patch features concatenated) -> projector -> Llama (LlamaModel)
    over [BOS][IMG x N][TEXT][ACT x num_queries] -> hidden states at the action query positions -> head.

    Args:
        cfg: the ``foundation`` section (FoundationConfig dataclass or DictConfig).
        num_queries: number of learned action-query embeddings appended after the text.
        head: maps [B, num_queries, D] hidden states to the output (LatentActionHead for
            pretraining; the finetuning stage passes its own).
        llm: a ready LlamaModel (e.g. from ``load_backbones``); None builds a random one from
            ``cfg.llm`` with ``vocab_size`` (default ``cfg.llm.vocab_size``).
        vocab_size: the tokenizer's size, for a random Llama.

    Inputs are those of VLAProcessor: uint8 images at ``cfg.vision.image_size`` and right-padded
    ``input_ids`` that start with BOS. Vision weights are random here; load them with
    ``model.vision.load_state_dict(...)`` (``load_backbones``) or a full checkpoint.
    """

    def __init__(
        self,
        cfg: Any,
        *,
        num_queries: int,
        head: nn.Module,
        llm: LlamaModel | None = None,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        self.vision = FusedVisionEncoder(_get(cfg, "vision"))
        if llm is None:
            llm = LlamaModel(llama_config_from(_get(cfg, "llm"), vocab_size))
        elif vocab_size is not None and llm.config.vocab_size != vocab_size:
            raise ValueError(
                f"the Llama has {llm.config.vocab_size} embeddings, the tokenizer {vocab_size} tokens"
            )
        self.llm = llm
        hidden = int(llm.config.hidden_size)
        self.projector = Projector(self.vision.out_dim, hidden, _get(_get(cfg, "projector"), "hidden_dim"))
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        self.num_queries = int(num_queries)
        std = float(getattr(llm.config, "initializer_range", 0.02))
        self.action_queries = nn.Parameter(torch.randn(self.num_queries, hidden) * std)
        self.head = head

    @property
    def hidden_size(self) -> int:
        return int(self.llm.config.hidden_size)

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_patches

    def enable_activation_checkpointing(self) -> None:
        """Recompute decoder-layer activations in backward (memory for compute)."""
        self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _sequence(self, images_uint8: Tensor, input_ids: Tensor, attention_mask: Tensor):
        """Input embeddings, attention mask and the action positions [B, Q] of every sample."""
        batch, length = input_ids.shape
        mask = attention_mask.bool()
        lengths = mask.sum(dim=1)
        steps = torch.arange(length, device=input_ids.device)
        if (lengths < 1).any() or not torch.equal(mask, steps[None] < lengths[:, None]):
            raise ValueError("attention_mask must be right-padded with BOS first (as VLAProcessor builds it)")
        embed = self.llm.get_input_embeddings()
        tokens = embed(input_ids)
        image = self.projector(self.vision(images_uint8)).to(tokens.dtype)
        queries = self.action_queries.to(tokens.dtype)

        q = self.num_queries
        text_len = (lengths - 1)[:, None]  # real text tokens after BOS
        pos = torch.arange(length - 1 + q, device=input_ids.device)[None]
        is_text = pos < text_len
        is_act = (pos >= text_len) & (pos < text_len + q)
        text = F.pad(tokens[:, 1:], (0, 0, 0, q))
        act = queries[(pos - text_len).clamp(0, q - 1)]
        tail = torch.where(
            is_text[..., None], text, torch.where(is_act[..., None], act, torch.zeros_like(act))
        )
        embeds = torch.cat([tokens[:, :1], image, tail], dim=1)
        prefix = 1 + image.shape[1]
        full_mask = torch.cat([mask.new_ones(batch, prefix), is_text | is_act], dim=1).long()
        act_pos = prefix + text_len + torch.arange(q, device=input_ids.device)[None]
        return embeds, full_mask, act_pos

    def action_hidden(self, images_uint8: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Last-layer hidden states at the action-query positions: [B, num_queries, D]."""
        embeds, mask, act_pos = self._sequence(images_uint8, input_ids, attention_mask)
        position_ids = torch.arange(embeds.shape[1], device=embeds.device)[None].expand(embeds.shape[0], -1)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state
        index = act_pos[..., None].expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, index)

    def forward(self, images_uint8: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The head's output on the action-query states (latent logits [B, num_tokens, vocab])."""
        return self.head(self.action_hidden(images_uint8, input_ids, attention_mask))
