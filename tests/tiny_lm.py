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


def _alpha_words(per_letter: int = 120, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for letter in "abcdefghijklmnopqrstuvwxyz":
        chosen: set[str] = set()
        while len(chosen) < per_letter:
            chosen.add(letter + "".join(rng.choice("aeioulnrst") for _ in range(rng.randint(2, 5))))
        out += sorted(chosen)
    return out


ALPHA_WORDS = _alpha_words()
"""Words of letters only, 120 per first letter: a vocabulary for the first-letter task."""


def tiny_lm(seed: int = 0, words: list[str] | None = None) -> LoadedModel:
    """The tiny LM over `words` (default WORDS). Over ALPHA_WORDS its embeddings carry each
    word's first letter (a direction per letter), so a first-letter probe can read it."""
    words = words or WORDS
    vocab = {"<bos>": 0, "<unk>": 1, "<sep>": 2, **{w: i + 3 for i, w in enumerate(words)}}
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
    if words == ALPHA_WORDS:
        gen = torch.Generator().manual_seed(seed)
        letters = torch.nn.functional.normalize(torch.randn(26, HIDDEN, generator=gen), dim=1)
        with torch.no_grad():
            for w in words:
                model.model.embed_tokens.weight[vocab[w]] = (
                    4 * letters[ord(w[0]) - ord("a")] + 0.5 * torch.randn(HIDDEN, generator=gen))
    return LoadedModel(model=model, tokenizer=hf_tok, name="tiny", path="tiny-llama",
                       causal=True, bos_id=0)


def text_file(folder: Path, n_docs: int = 12, words: int = 40, seed: int = 0,
              vocab: list[str] | None = None) -> Path:
    """Blank-line separated documents of random words; the third holds a special token."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(vocab or WORDS) for _ in range(words)) for _ in range(n_docs)]
    docs[2] = docs[2].replace(docs[2].split()[5], "<sep>", 1)
    path = folder / "docs.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path
