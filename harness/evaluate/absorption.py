"""Feature absorption (Chanin et al. 2024), as SAEBench 0.6.0 measures it
(evals/absorption: k_sparse_probing.py, feature_absorption_calculator.py, main.py).

On the first-letter task (harness.evaluate.absorption_data), per letter whose probe reaches test
F1 > MIN_PROBE_F1:
- the main latents: an L1-penalised one-vs-rest probe on the SAE's latents ranks them; k-sparse
  logistic probes (k = 1..MAX_K, on the top k by weight) are scored by test F1, and k grows while
  F1 rises by more than F1_JUMP; the last accepted k's latents are the letter's main latents;
- on each test word of the letter that the probe finds (logit > 0): with a = the activation's
  projection on the unit probe direction p, and each latent's projection z_i cos(W_dec_i, p), the
  absorption fraction is 0 when the main latents' projection reaches a or the top
  ABSORBERS_MAX other latents with cos >= ABSORBER_COS and positive projection carry less than
  PROJECTION_SHARE of a; 1 when the main latents' projection is <= 0; else
  min(absorbers, a - main) / (min(absorbers, a - main) + main). Full absorption: no main latent
  fires, and the latent of largest projection has cos >= FULL_COS and carries >= PROJECTION_SHARE
  of a (a >= 0).
absorption_rate and full_absorption_rate are the per-letter means over those words, averaged over
the letters.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from harness.core.sae import SparseAutoencoder
from harness.evaluate.absorption_data import LETTERS, LetterTask, train_multi_probe
from harness.evaluate.config import MIN_LETTERS

MIN_PROBE_F1 = 0.6
"""A letter counts when the first-letter probe's test F1 exceeds this (SAEBench min_GT_probe_f1)."""
MAX_K = 10
"""Largest k-sparse probe (SAEBench max_k_value)."""
F1_JUMP = 0.03
"""k grows while the k-sparse probe's F1 rises by more than this (SAEBench f1_jump_threshold)."""
ABSORBER_COS, FULL_COS = 0.1, 0.025
"""Cosine to the probe an absorbing latent needs, for the fraction and for full absorption."""
PROJECTION_SHARE = 0.4
"""Share of the probe projection the absorbing latents must carry."""
ABSORBERS_MAX = 3
"""Latents that may share an absorption."""


@dataclass(frozen=True)
class AbsorptionResult:
    """One SAE's absorption on the first-letter task."""

    absorption_rate: float
    """Mean absorption fraction (per letter, then over letters); NaN below MIN_LETTERS."""
    full_absorption_rate: float
    """Share of the probe's true positives fully absorbed by one latent (same means)."""
    absorption_letters: int
    """Letters measured (probe F1 > MIN_PROBE_F1)."""
    absorption_tokens: int
    """Test words measured: the probe's true positives over those letters."""
    absorption_main_latents: float
    """Mean number of main latents per letter (1 + SAEBench's num_split_features)."""

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float((y & pred).sum())
    return 2 * tp / max(float(y.sum() + pred.sum()), 1.0)


def letters_measured(task: LetterTask) -> list[int]:
    """Letters whose probe reaches test F1 > MIN_PROBE_F1."""
    pred = (task.probe_scores(task.x_test) > 0).numpy()
    y = task.y_test.numpy()
    return [i for i in range(len(LETTERS)) if _f1(y == i, pred[:, i]) > MIN_PROBE_F1]


def l1_probe(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SAEBench's train_sparse_multi_probe: [26, n_latents] weights ranking latents per letter
    (L1 0.01, batch 4,096, weight decay 1e-6)."""
    return train_multi_probe(z, y, batch=4096, weight_decay=1e-6, l1=0.01)[0]


def main_latents(ranking: torch.Tensor, z_train: np.ndarray, y_train: np.ndarray,
                 z_test: np.ndarray, y_test: np.ndarray) -> list[int]:
    """The letter's main latents: the top k by `ranking`, k grown while test F1 jumps."""
    from sklearn.linear_model import LogisticRegression

    best, chosen = -100.0, []
    for k in range(1, MAX_K + 1):
        ids = ranking.topk(k).indices.tolist()
        with warnings.catch_warnings():  # a dead latent's column is all zeros: fine
            warnings.simplefilter("ignore")
            probe = LogisticRegression(max_iter=500, class_weight="balanced")
            probe.fit(z_train[:, ids], y_train)
        f1 = _f1(y_test, probe.decision_function(z_test[:, ids]) > 0)
        if f1 <= best + F1_JUMP:
            break
        best, chosen = f1, ids
    return chosen


def fractions(x: torch.Tensor, z: torch.Tensor, cos: torch.Tensor, direction: torch.Tensor,
              main: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(absorption fraction, full absorption) of each row: activations `x`, latents `z`,
    decoder cosines to the unit probe `direction`, and the letter's main latents."""
    proj = z * cos
    act = x @ direction
    is_main = torch.zeros(z.shape[1], dtype=torch.bool)
    is_main[main] = True
    main_proj = proj[:, is_main].sum(1)
    candidate = (~is_main & (cos >= ABSORBER_COS))[None, :] & (proj > 0)
    absorbers = proj.where(candidate, 0.0).topk(min(ABSORBERS_MAX, z.shape[1]), dim=1).values
    absorbed = absorbers.sum(1)
    share = absorbed / act
    taken = torch.minimum(absorbed, act - main_proj)
    partial = (taken / (taken + main_proj)).clamp(0, 1)
    frac = torch.where((main_proj >= act) | (share < PROJECTION_SHARE), 0.0,
                       torch.where(main_proj <= 0, 1.0, partial))
    top = proj.argmax(1)
    full = ((z[:, is_main] < 1e-8).all(1) & (cos[top] >= FULL_COS) & (act >= 0)
            & (proj[torch.arange(len(top)), top] / act >= PROJECTION_SHARE))
    return frac, full


@torch.no_grad()
def absorption(sae: SparseAutoencoder, task: LetterTask, letters: list[int] | None = None,
               min_letters: int = MIN_LETTERS,
               main: dict[int, list[int]] | None = None) -> AbsorptionResult:
    """The SAE's absorption on `task` over `letters` (default letters_measured); the rates are
    NaN with fewer than `min_letters`. `main` gives the letters' main latents instead of the
    k-sparse probes (to compare with another implementation's choice)."""
    letters = letters_measured(task) if letters is None else letters
    z_train = sae.encode_dense(task.x_train.to(sae.W_dec)).float().cpu()
    z_test = sae.encode_dense(task.x_test.to(sae.W_dec)).float().cpu()
    if main is None:
        ranking = l1_probe(z_train, task.y_train)
    dec = torch.nn.functional.normalize(sae.W_dec.float().cpu(), dim=-1)
    scores = task.probe_scores(task.x_test)
    rates, full_rates, mains, tokens = [], [], [], 0
    for i in letters:
        direction = torch.nn.functional.normalize(task.probe_weight[i], dim=0)
        chosen = main[i] if main is not None else main_latents(
            ranking[i], z_train.numpy(), (task.y_train == i).numpy(), z_test.numpy(),
            (task.y_test == i).numpy())
        found = (task.y_test == i) & (scores[:, i] > 0)
        frac, full = fractions(task.x_test[found], z_test[found], dec @ direction, direction,
                               chosen)
        rates.append(frac.mean().item())
        full_rates.append(full.float().mean().item())
        mains.append(len(chosen))
        tokens += int(found.sum())
    enough = len(letters) >= min_letters
    return AbsorptionResult(
        absorption_rate=float(np.mean(rates)) if enough else math.nan,
        full_absorption_rate=float(np.mean(full_rates)) if enough else math.nan,
        absorption_letters=len(letters), absorption_tokens=tokens,
        absorption_main_latents=float(np.mean(mains)) if mains else math.nan)
