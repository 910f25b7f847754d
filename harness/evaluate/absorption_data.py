"""The first-letter task of the absorption metric (Chanin et al. 2024; SAEBench 0.6.0's
evals/absorption): single-token words, their in-context prompts, the activations at the word's
position and a 26-way first-letter probe on them, computed once per (model, layer) and cached.

As SAEBench: the vocabulary is every token that is letters only after an optional leading space
(vocab.get_alpha_tokens); WORDS of them are drawn (seeded) and split 80/20 by word; each word's
prompt holds ICL_EXAMPLES others of its split as "{w} has the first letter: {W}" lines, a newline
in front, and ends "{word} has the first letter:" (prompting.create_icl_prompt); the activation is
the hook point's output at the word's token (SAEBench: position -6); the probe is one-vs-rest
logistic regression trained with Adam (probing.train_multi_probe: lr 1e-2 decayed to 1e-5 over 50
epochs, batch 64, weight decay 1e-4, positives weighted by negatives/positives). Unlike SAEBench,
the word's token id is placed as is (not re-tokenised from text), and the absorption step reads
the cached test activations instead of drawing fresh prompts for the same words.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.core.atomic import write_safetensors
from harness.data.models import LoadedModel
from harness.evaluate.config import ABSORPTION_WORDS
from harness.evaluate.hidden import hidden_at, task_folder

LETTERS = string.ascii_lowercase
WORDS = ABSORPTION_WORDS
ICL_EXAMPLES = 10
"""Other words of the split in each prompt (SAEBench's max_icl_examples)."""
TEMPLATE = "{word} has the first letter:"
"""SAEBench's prompt_template."""
SEED = 42
"""SAEBench's random_seed: the draw, the split and the prompts."""
CACHE_FORMAT = 1
"""Version of a cached task; part of its file name."""


@dataclass(frozen=True)
class LetterTask:
    """The first-letter task at one hook point: activations, labels and the probe."""

    x_train: torch.Tensor
    """[n_train, d] activations at the words' tokens."""
    y_train: torch.Tensor
    """[n_train] letter index 0-25."""
    x_test: torch.Tensor
    y_test: torch.Tensor
    probe_weight: torch.Tensor
    """[26, d] the first-letter probe's rows."""
    probe_bias: torch.Tensor
    """[26]"""
    test_words: list[str]
    """The test words, in the rows' order."""

    def probe_scores(self, x: torch.Tensor) -> torch.Tensor:
        """[n, 26] the probe's logits."""
        return x @ self.probe_weight.T + self.probe_bias


def alpha_tokens(tokenizer: object) -> list[tuple[int, str]]:
    """(id, text) of every token that is ASCII letters after an optional leading space."""
    out = []
    special = set(getattr(tokenizer, "all_special_ids", []))
    for token, i in sorted(tokenizer.get_vocab().items(), key=lambda t: t[1]):  # type: ignore
        if i in special:
            continue
        text = tokenizer.convert_tokens_to_string([token])  # type: ignore[attr-defined]
        word = text[1:] if text.startswith(" ") else text
        if word and all(c in string.ascii_letters for c in word):
            out.append((i, text))
    return out


def first_letter(word: str) -> int:
    return LETTERS.index(word.strip()[0].lower())


def prompts(lm: LoadedModel, words: list[tuple[int, str]],
            rng: random.Random) -> tuple[list[list[int]], list[int]]:
    """Each word's prompt as token ids, and the word's position in it."""
    tok = lm.tokenizer
    front = [] if lm.bos_id is None else [lm.bos_id]
    tail = tok(TEMPLATE.format(word=""), add_special_tokens=False)["input_ids"]
    sequences, positions = [], []
    for i, text in words:
        others = [w for _, w in rng.sample(words, min(ICL_EXAMPLES + 1, len(words)))
                  if w != text][:ICL_EXAMPLES]
        lines = "".join(f"\n{TEMPLATE.format(word=w)} {w.strip()[0].upper()}" for w in others)
        head = front + tok(lines + "\n", add_special_tokens=False)["input_ids"]
        sequences.append(head + [i] + tail)
        positions.append(len(head))
    return sequences, positions


def train_multi_probe(x: torch.Tensor, y: torch.Tensor, *, batch: int, weight_decay: float,
                      l1: float = 0.0, epochs: int = 50,
                      seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """SAEBench's train_multi_probe: one-vs-rest logistic regression on the 26 letters (BCE,
    positives weighted by negatives/positives), Adam from 1e-2 decayed exponentially to 1e-5
    over the epochs, plus `l1` x the mean over letters of |w|_1: (weight [26, d], bias [26])."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.nn.functional.one_hot(y, len(LETTERS)).float()
    pos = target.sum(0)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=(len(y) - pos) / pos.clamp_min(1))
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], len(LETTERS))
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=(1e-5 / 1e-2) ** (1 / epochs))
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(len(y), generator=gen).split(batch):
                opt.zero_grad()
                loss = loss_fn(probe(x[idx]), target[idx])
                if l1:
                    loss = loss + l1 * probe.weight.abs().sum(-1).mean()
                loss.backward()
                opt.step()
            sched.step()
    return probe.weight.detach().clone(), probe.bias.detach().clone()


def train_probe(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first-letter probe on activations (SAEBench: batch 64, weight decay 1e-4)."""
    return train_multi_probe(x, y, batch=64, weight_decay=1e-4)


def letter_task(lm: LoadedModel, layer: str, words: int = WORDS,
                cache: Path | None = None) -> tuple[LetterTask, bool]:
    """The task at `layer`, from `cache` (default: the saesweep cache) when it holds it, else
    computed and saved there; and whether it was computed now."""
    from safetensors import safe_open

    folder = task_folder("absorption", lm, layer, cache)
    file = folder / f"letters-{CACHE_FORMAT}-{words}.safetensors"
    if file.exists():
        with safe_open(str(file), "pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            test_words = json.loads(f.metadata()["test_words"])
        return LetterTask(**t, test_words=test_words), False
    rng = random.Random(SEED)
    vocab = alpha_tokens(lm.tokenizer)
    drawn = rng.sample(vocab, min(words, len(vocab)))
    cut = int(0.8 * len(drawn))
    splits = {}
    for name, part in (("train", drawn[:cut]), ("test", drawn[cut:])):
        seqs, pos = prompts(lm, part, rng)
        splits[f"x_{name}"] = hidden_at(lm, layer, seqs, pos)
        splits[f"y_{name}"] = torch.tensor([first_letter(w) for _, w in part])
    weight, bias = train_probe(splits["x_train"], splits["y_train"])
    t = {**splits, "probe_weight": weight, "probe_bias": bias}
    test_words = [w for _, w in drawn[cut:]]
    write_safetensors(file, t, metadata={"test_words": json.dumps(test_words)})
    return LetterTask(**t, test_words=test_words), True
