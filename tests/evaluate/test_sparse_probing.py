"""Sparse probing (sae-probes' protocol): a planted concept, the embeddings' cache, and what is
refused before any model is loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.core.sae import TopKSae
from harness.evaluate.probing_data import ProbingSet, probing_sets
from harness.evaluate.sparse_probing import sparse_probing


def _planted(seed: int, n: int = 600, d: int = 64) -> tuple[ProbingSet, torch.Tensor]:
    """A dataset whose label is one direction's presence in the activations."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    y = (torch.rand(n, generator=gen) < 0.5).long()
    x = 0.3 * torch.randn(n, d, generator=gen) + 1.5 * y[:, None] * direction
    return ProbingSet("planted", x[:400], y[:400].numpy(), x[400:], y[400:].numpy()), direction


def test_a_latent_on_the_planted_concept_probes_it_and_a_random_sae_does_not():
    data, direction = _planted(0)
    perfect = TopKSae(256, 64, 4, seed=0)
    with torch.no_grad():
        perfect.b_dec.zero_()
        perfect.enc_weight[5] = 4 * direction  # latent 5 fires on the concept alone
        perfect.enc_weight[torch.arange(256) != 5] *= 0.05
    scores = sparse_probing(perfect, [data])
    assert scores["sparse_probing_top1_accuracy"] >= 0.97
    assert scores["sparse_probing_top1_auc"] >= 0.97
    random = sparse_probing(TopKSae(256, 64, 4, seed=1), [data])
    assert random["sparse_probing_top1_accuracy"] < 0.8  # near chance: no latent is the concept
    assert set(scores) == {f"sparse_probing_top{k}_{m}" for k in (1, 2, 5, 16)
                           for m in ("accuracy", "auc")}


def test_embeddings_are_computed_once_per_model_and_layer(tmp_path: Path):
    pytest.importorskip("transformers")
    from tiny_lm import LAYER, WORDS, tiny_lm

    rng = np.random.default_rng(0)
    rows = [(" ".join(rng.choice(WORDS, 4)), "yes" if i % 2 else "no") for i in range(260)]
    csv = tmp_path / "1_toy.csv"
    csv.write_text("prompt,target\n" + "\n".join(f"{p},{t}" for p, t in rows))
    lm = tiny_lm()
    first, computed = probing_sets(lm, LAYER, {"1_toy": csv}, tmp_path / "cache")
    assert computed == 1 and first[0].x_train.shape == (160, 32)
    assert len(first[0].y_test) == 99 and set(first[0].y_train.tolist()) == {0, 1}
    again, computed = probing_sets(lm, LAYER, {"1_toy": csv}, tmp_path / "cache")
    assert computed == 0 and torch.equal(again[0].x_test, first[0].x_test)


def test_a_missing_install_or_an_unknown_dataset_is_refused_before_the_model(tmp_path,
                                                                           monkeypatch, capsys):
    import importlib.util

    from harness.evaluate import cli

    sae = TopKSae(32, 8, 2, seed=0).save(tmp_path / "sae")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sae_probes" else real(name, *a))
    loads = []
    monkeypatch.setattr("harness.data.models.load_model", lambda *a, **k: loads.append(a))
    args = [str(sae), "--model", "smollm2", "--layer", "model.layers.6",
            "--metrics", "sparse_probing"]
    assert cli.main(args) == 2
    assert "pip install --no-deps sae-probes==0.4.2 zstandard" in capsys.readouterr().err
    assert cli.main([*args[:-1], "probing"]) == 2  # not a metric group
    assert "--metrics 'probing'" in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if real("sae_probes") is not None:
        assert cli.main([*args, "--datasets", "5_hist_fig_ismale,no_such_set"]) == 2
        assert "unknown sae-probes dataset(s) ['no_such_set']" in capsys.readouterr().err
    assert not loads


def test_the_default_datasets_read_from_the_sae_probes_wheel_split_balanced():
    import importlib.util

    if importlib.util.find_spec("sae_probes") is None:  # its package imports what it lacks
        pytest.skip("pip install --no-deps sae-probes==0.4.2 zstandard")
    from harness.evaluate.probing_data import (
        DEFAULT_DATASETS,
        TEST_EXAMPLES,
        TRAIN_EXAMPLES,
        read_dataset,
        resolve_datasets,
        split,
    )

    files = resolve_datasets(None)
    assert list(files) == list(DEFAULT_DATASETS)
    prompts, y = read_dataset(files["5_hist_fig_ismale"])
    assert len(prompts) == len(y) > TRAIN_EXAMPLES + TEST_EXAMPLES and set(y) == {0, 1}
    train, test = split(y)
    assert len(train) == TRAIN_EXAMPLES and len(test) == TEST_EXAMPLES
    assert not set(train) & set(test)
    assert y[train].sum() == TRAIN_EXAMPLES // 2 and y[test].sum() == TEST_EXAMPLES // 2
    again = split(y)
    assert (again[0] == train).all()  # seeded
