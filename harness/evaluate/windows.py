"""The evaluation windows: which tokens an SAE is spliced into, by one reproducible rule.

- Documents: a corpus name of harness.data.capture (its texts, in order), a folder of .txt files
  (one document per file, files in path order), or a UTF-8 file whose documents are separated by
  blank lines.
- Each document is tokenised without special tokens and cut into consecutive, non-overlapping
  runs of `seq_len` tokens; a shorter remainder is dropped.
- Every window is the model's BOS followed by one such run: seq_len + 1 ids.
- The first `n_windows` windows, in document order, are used.
- Kept positions: those whose next-token prediction is scored and whose activation is spliced:
  positions 1 .. seq_len - 1 of a window (the BOS at 0 is never spliced nor scored, and the last
  position has no next token), less any position holding a special token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.core.store import StoreError
from harness.data.corpora import corpus_texts

_DOCS_PER_CALL = 256  # documents tokenised per tokenizer call (stop once there are enough)


@dataclass(frozen=True)
class Windows:
    """Token windows of an evaluation set and the positions that count."""

    ids: torch.Tensor
    """[N, seq_len + 1] token ids, BOS first."""
    kept: torch.Tensor
    """[N, seq_len + 1] bool: spliced and scored positions (predicting ids at position + 1)."""
    description: str
    """Where the text came from."""

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())


def documents(text: str) -> tuple[list[str], str]:
    """(documents, description): a file is split at blank lines, anything else is read as
    capture reads it (a corpus name or a folder of .txt files)."""
    path = Path(text)
    if path.is_file():
        try:
            body = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise StoreError(f"{path}: not a readable UTF-8 text file ({e})") from e
        docs = [d.strip() for d in re.split(r"\n\s*\n", body) if d.strip()]
        return docs, f"{len(docs)} blank-line separated documents of {path}"
    return corpus_texts(text)


def make_windows(tokenizer: Any, text: str, seq_len: int, n_windows: int,
                 bos_id: int) -> Windows:
    """The first `n_windows` windows of `text` by the rule of this module."""
    if seq_len < 2 or n_windows < 1:
        raise ValueError(f"need seq_len >= 2 and windows >= 1, got {seq_len} and {n_windows}")
    docs, description = documents(text)
    rows: list[list[int]] = []
    for start in range(0, len(docs), _DOCS_PER_CALL):
        batch = docs[start:start + _DOCS_PER_CALL]
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            for cut in range(0, len(ids) - seq_len + 1, seq_len):
                rows.append([bos_id, *ids[cut:cut + seq_len]])
                if len(rows) == n_windows:
                    break
            if len(rows) == n_windows:
                break
        if len(rows) == n_windows:
            break
    if len(rows) < n_windows:
        raise StoreError(f"{description}: only {len(rows)} windows of {seq_len} tokens, "
                         f"{n_windows} asked for (use fewer windows, a shorter seq_len or "
                         "more text)")
    ids = torch.tensor(rows, dtype=torch.long)
    kept = torch.zeros_like(ids, dtype=torch.bool)
    kept[:, 1:seq_len] = True
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)) or [-1])
    kept &= ~torch.isin(ids, special)
    return Windows(ids=ids, kept=kept, description=description)
