"""SAEBench 0.6.0's absorption code run on the very inputs harness.evaluate.absorption reads
(`pip install --no-deps sae-bench==0.6.0`, with sae-lens for its SAE class): its k-sparse
probes, its feature-split rule, its FeatureAbsorptionCalculator and its aggregation. Its model
is an adapter handing it the cached test activations (its prompts are drawn again, as it does;
their activations are the cached ones of the same words)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.evaluate.absorption import MAX_K, letters_measured
from harness.evaluate.absorption_data import LETTERS, LetterTask


@dataclass
class SaebenchAbsorption:
    """SAEBench's figures on one SAE, with its main latents, and ours given its main latents."""

    absorption_rate: float
    full_absorption_rate: float
    main_latents: dict[int, list[int]]
    """Letter index -> its main latents as SAEBench's k-sparse probes choose them."""


class _CachedModel:
    """What FeatureAbsorptionCalculator asks of a HookedTransformer, answered from the cache."""

    def __init__(self, task: LetterTask, hook: str) -> None:
        self.rows = {w: i for i, w in enumerate(task.test_words)}
        self.x, self.hook = task.x_test, hook
        self.word = ""

    def to_tokens(self, _text: str) -> torch.Tensor:
        return torch.zeros(1, 8, dtype=torch.long)  # every prompt "the same length"

    def run_with_cache(self, prompts: list[str], names_filter: list[str]) -> tuple:
        # the word is the last prompt line's text before the template
        rows = [self.rows[p.split("\n")[-1].removesuffix(" has the first letter:")]
                for p in prompts]
        acts = torch.zeros(len(rows), 8, self.x.shape[1])
        acts[:, -6] = self.x[rows]
        return None, {names_filter[0]: acts}


def saebench_absorption(sae_lens_sae: Any, task: LetterTask) -> SaebenchAbsorption:
    """SAEBench's absorption of `sae_lens_sae` (an sae_lens SAE) on `task`."""
    from sae_bench.evals.absorption.feature_absorption_calculator import (
        FeatureAbsorptionCalculator,
    )
    from sae_bench.evals.absorption.k_sparse_probing import (
        add_feature_splits_to_metrics_df,
        train_k_sparse_probes,
    )
    from sae_bench.evals.absorption.main import _aggregate_results_df
    from sae_bench.evals.absorption.prompting import first_letter_formatter
    from sklearn.metrics import f1_score

    train = [("", int(y)) for y in task.y_train]
    probes = train_k_sparse_probes(sae_lens_sae, train, task.x_train, ks=range(1, MAX_K + 1),
                                   precalc_sae_acts=True)
    with torch.no_grad():
        z_test = sae_lens_sae.encode(task.x_test).float()
    rows = []
    for letter in range(len(LETTERS)):
        row: dict[str, Any] = {"letter": LETTERS[letter]}
        for k in range(1, MAX_K + 1):
            probe = probes[k][letter]
            with torch.no_grad():
                pred = (probe(z_test) > 0).numpy()
            row[f"f1_sparse_sae_{k}"] = f1_score(task.y_test.numpy() == letter, pred)
            row[f"sparse_sae_k_{k}_feats"] = probe.feature_ids.numpy()
        rows.append(row)
    metrics = pd.DataFrame(rows)
    add_feature_splits_to_metrics_df(metrics, max_k_value=MAX_K)
    main = {i: [int(f) for f in metrics["split_feats"].iloc[i]] for i in range(len(LETTERS))}
    calculator = FeatureAbsorptionCalculator(
        model=_CachedModel(task, "blocks.0.hook_resid_post"),  # type: ignore[arg-type]
        icl_word_list=task.test_words, max_icl_examples=10,
        base_template="{word} has the first letter:", answer_formatter=first_letter_formatter(),
        word_token_pos=-6, full_absorption_probe_cos_sim_threshold=0.025,
        absorption_fraction_probe_cos_sim_threshold=0.1,
        probe_projection_proportion_threshold=0.4,
        absorption_fraction_max_absorbing_latents=3, batch_size=64)
    scores = task.probe_scores(task.x_test)
    results = []
    for letter in letters_measured(task):
        found = ((task.y_test == letter) & (scores[:, letter] > 0)).nonzero().flatten()
        words = [task.test_words[i] for i in found]
        out = calculator.calculate_absorption(
            sae_lens_sae, words=words, probe_direction=task.probe_weight[letter],
            main_feature_ids=main[letter], layer=0, show_progress=False)
        results += [{"letter": LETTERS[letter], "absorption_fraction": float(r.absorption_fraction),
                     "is_full_absorption": bool(r.is_full_absorption),
                     "num_probe_true_positives": len(words), "split_feats": main[letter]}
                    for r in out.word_results]
    agg = _aggregate_results_df(pd.DataFrame(results))
    return SaebenchAbsorption(float(np.mean(agg["mean_absorption_fraction"])),
                              float(np.mean(agg["full_absorption_rate"])), main)
