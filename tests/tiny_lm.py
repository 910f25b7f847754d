"""A tiny randomly initialised causal LM and a word-level tokenizer, built from configs (nothing
downloaded), with a text file to evaluate on."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import torch  # noqa: E402

from harness.data.models import LoadedModel  # noqa: E402

WORDS = [f"w{i}" for i in range(60)]
HIDDEN = 32
LAYER = "model.layers.1"


def tiny_lm(seed: int = 0) -> LoadedModel:
    vocab = {"<bos>": 0, "<unk>": 1, "<sep>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>",
                                                  unk_token="<unk>", sep_token="<sep>")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=HIDDEN,
                                      intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=4,
                                      max_position_embeddings=128, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    return LoadedModel(model=model, tokenizer=hf_tok, name="tiny", path="tiny-llama",
                       causal=True, bos_id=0)


def text_file(folder: Path, n_docs: int = 12, words: int = 40, seed: int = 0) -> Path:
    """Blank-line separated documents of random words; the third holds a special token."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n_docs)]
    docs[2] = docs[2].replace(docs[2].split()[5], "<sep>", 1)
    path = folder / "docs.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path
