"""An offline Llama-style tokenizer trained on the dataset's own instructions.

A bare ``LlamaTokenizer()`` knows three tokens and encodes text to nothing. This one is a BPE
with Llama's layout (``<unk>``, ``<s>``, ``</s>``, the 256 byte-fallback tokens, learned pieces),
so any UTF-8 text round-trips and ``AutoTokenizer.from_pretrained`` reloads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def train_llama_tokenizer(texts: Iterable[str], vocab_size: int):
    """A LlamaTokenizer with at most ``vocab_size`` tokens, learned from ``texts``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    reserved = len(SPECIAL_TOKENS) + 256
    if vocab_size <= reserved:
        raise ValueError(f"foundation.llm.tokenizer_vocab_size must exceed {reserved}, got {vocab_size}")
    texts = [t for t in texts if t]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - reserved, show_progress=False, special_tokens=[])
    bpe.train_from_iterator(texts, trainer)
    learned = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab and len(vocab) < vocab_size:
            vocab[piece] = len(vocab)
    merges = [tuple(m) for m in learned["merges"] if "".join(m) in vocab and all(p in vocab for p in m)]
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
