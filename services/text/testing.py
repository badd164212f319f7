"""Tiny, seeded models built in code for tests and examples (no downloads, seconds to build).

`build_tiny_model(folder)` writes a Hugging Face folder — a byte-level BPE tokenizer trained on a
few sentences and a randomly initialised Llama with a handful of dimensions — that the service
loads through its ordinary loader, like any model folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "Once upon a time, in a kingdom by the sea, there lived a dragon who loved riddles.",
    "The knight rode north through the forest. Snow fell on the silent road!",
    "She opened the door and asked: who is there? Nobody answered.",
    "Ünïcödé tëxt, emoji 🐉 and accents: café, naïve, résumé, 東京.",
    "In the tavern the bard sang of gold, of ships, of storms and of the old king.",
]
EOS = "<|endoftext|>"
BOS = "<|startoftext|>"


def build_tokenizer(folder: Path, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, BOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=BOS, pad_token=EOS)
    fast.save_pretrained(folder)
    return fast


def build_tiny_model(folder: Path, seed: int = 0, context_window: int = 512, layers: int = 2,
                     dtype: torch.dtype = torch.float32) -> Path:
    """A random tiny Llama with a real tokenizer, saved to `folder`; returns the folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context_window,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    # Larger-than-default weights give peaked, varied distributions, so sampled text differs by
    # seed and samplers have something to cut.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.35)
    model.save_pretrained(folder)
    return folder
