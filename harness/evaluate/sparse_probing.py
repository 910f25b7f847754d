"""Sparse probing (sae-probes' protocol, Kantamneni et al. 2025): how much of a binary concept a
handful of an SAE's latents carry.

Per dataset (harness.evaluate.probing_data): the SAE's latents of the training examples, each
divided by its mean non-zero magnitude, rank the latents by the absolute difference of the two
classes' means; a logistic-regression probe on the top k (k in KS) is fitted with its inverse
regularisation C chosen among 10 values from 1e5 to 1e-5 by validation AUC (the last 20% of the
training examples, at most 100), then refitted on them all, and scored on the test examples:
accuracy and ROC AUC (sae-probes' find_best_reg, L2). The baseline is the same probe on the raw
activations. Every value is the mean over the datasets.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from harness.core.sae import SparseAutoencoder
from harness.evaluate.probing_data import ProbingSet

KS = (1, 2, 5, 16)
"""Latents per probe (the metric names' top-k)."""
CS = np.logspace(5, -5, 10)
"""Inverse regularisations tried (sae-probes')."""
SEED = 42
"""The probe's seed (what sae-probes' run_sae_evals passes to find_best_reg)."""


def probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
          y_test: np.ndarray) -> tuple[float, float]:
    """(test accuracy, test ROC AUC) of sae-probes' L2 logistic-regression probe (its
    convergence warnings silenced, as sae-probes' run_sae_evals silences them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _probe(x_train, y_train, x_test, y_test)


def _probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
           y_test: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    n = x_train.shape[0]
    val = min(int(0.2 * n), 100)
    fit, held = slice(0, n - val), slice(n - val, n)
    best_c, best = None, -np.inf
    if val > 0 and len(np.unique(y_train[held])) == 2 and len(np.unique(y_train[fit])) == 2:
        for c in CS:
            model = LogisticRegression(C=c, random_state=SEED, max_iter=1000)
            model.fit(x_train[fit], y_train[fit])
            score = roc_auc_score(y_train[held], model.predict_proba(x_train[held])[:, 1])
            if score > best:
                best_c, best = c, score
    model = LogisticRegression(**({"C": best_c} if best_c is not None else {}),
                               random_state=SEED, max_iter=1000)
    order = np.random.RandomState(SEED).permutation(n)
    model.fit(x_train[order], y_train[order])
    return (float(accuracy_score(y_test, model.predict(x_test))),
            float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1])))


def mean_act_normalised(z: torch.Tensor) -> torch.Tensor:
    """Each latent divided by its mean magnitude where it fires (sae-probes')."""
    sums, counts = z.abs().sum(0), (z != 0).sum(0)
    return z / (sums / (counts + 1e-6) + 1e-6)


def ranked_latents(z_train: torch.Tensor, y_train: np.ndarray) -> torch.Tensor:
    """Latents by |mean over class 1 - mean over class 0| of their normalised values."""
    z = mean_act_normalised(z_train)
    labels = torch.from_numpy(y_train).bool()
    return (z[labels].mean(0) - z[~labels].mean(0)).abs().argsort(descending=True)


@torch.no_grad()
def sparse_probing(sae: SparseAutoencoder, sets: Sequence[ProbingSet],
                   ks: Sequence[int] = KS) -> dict[str, float]:
    """sparse_probing_top{k}_accuracy and _auc for each k, averaged over `sets`."""
    scores: dict[str, list[float]] = {}
    for s in sets:
        z_train = sae.encode_dense(s.x_train.to(sae.W_dec)).float().cpu()
        z_test = sae.encode_dense(s.x_test.to(sae.W_dec)).float().cpu()
        order = ranked_latents(z_train, s.y_train)
        for k in ks:
            top = order[:k]
            acc, auc = probe(z_train[:, top].numpy(), s.y_train, z_test[:, top].numpy(),
                             s.y_test)
            scores.setdefault(f"sparse_probing_top{k}_accuracy", []).append(acc)
            scores.setdefault(f"sparse_probing_top{k}_auc", []).append(auc)
    return {name: float(np.mean(v)) for name, v in scores.items()}


def baseline(sets: Sequence[ProbingSet]) -> dict[str, float]:
    """sparse_probing_baseline_accuracy (and _auc): the probe on the raw activations."""
    acc, auc = zip(*(probe(s.x_train.numpy(), s.y_train, s.x_test.numpy(), s.y_test)
                     for s in sets), strict=True)
    return {"sparse_probing_baseline_accuracy": float(np.mean(acc)),
            "sparse_probing_baseline_auc": float(np.mean(auc))}
