"""Feature absorption (SAEBench's first-letter metric): the fraction of hand-built cases, a
planted SAE whose absorbing latents take a known share of one letter's words, and the cached
first-letter task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.core.sae import TopKSae
from harness.evaluate.absorption import absorption, fractions, letters_measured
from harness.evaluate.absorption_data import LetterTask

SQRT2 = 2 ** 0.5


def _case(main_act: float, absorber_proj: float) -> tuple[float, bool]:
    """x = e0 (probe projection 1); latent 0 decodes e0 (the main one), latent 1 decodes
    (e0 + e1)/sqrt2 (cos 0.707 to the probe) with the given projection on it."""
    x = torch.tensor([[1.0, 0.3, 0.0]])
    z = torch.tensor([[main_act, absorber_proj * SQRT2, 0.0]])
    dec = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 1]]), dim=1)
    direction = torch.tensor([1.0, 0, 0])
    frac, full = fractions(x, z, dec @ direction, direction, [0])
    return float(frac[0]), bool(full[0])


def test_fractions_of_hand_built_cases():
    # main carries 0.4 of the projection 1, the absorber 0.6: 0.6 / (0.6 + 0.4)
    assert _case(0.4, 0.6) == (pytest.approx(0.6), False)
    # the main latent is silent and the absorber carries it all: full absorption
    assert _case(0.0, 0.9) == (1.0, True)
    # an absorber below 40% of the projection absorbs nothing
    assert _case(0.0, 0.3) == (0.0, False)
    # the main latent alone covers the projection
    assert _case(1.2, 0.5) == (0.0, False)


def _planted(absorbed: int = 10) -> tuple[LetterTask, TopKSae]:
    """26 letters on orthonormal directions; the first `absorbed` test words of 'b' also carry a
    word-specific direction whose latent (encoder and decoder (b + s)/sqrt2) wins the top-1
    over b's main latent: those words are fully absorbed, every other word is not. The SAE has
    2,048 latents, the rest silent, as a real one's: SAEBench's L1 probe then starts from
    weights small beside the steps it takes."""
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(48, 48, generator=gen))[0].T  # orthonormal rows
    letters, specific = basis[:26], basis[26:26 + absorbed]

    def words(n_per: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(26).repeat_interleave(n_per)
        return letters[y] + 0.02 * torch.randn(len(y), 48, generator=gen), y

    x_train, y_train = words(30)
    x_test, y_test = words(40)
    b_rows = (y_test == 1).nonzero().flatten()[:absorbed]
    x_test[b_rows] += specific
    task = LetterTask(x_train, y_train, x_test, y_test, probe_weight=10 * letters,
                      probe_bias=torch.full((26,), -5.0), test_words=[""] * len(y_test))
    sae = TopKSae(2048, 48, 1, seed=0)
    absorbers = torch.nn.functional.normalize(letters[1] + specific, dim=1)
    rows = torch.cat([letters, absorbers])
    with torch.no_grad():
        for p in (sae.b_enc, sae.b_dec, sae.enc_weight, sae.W_dec):
            p.zero_()
        sae.enc_weight[:len(rows)] = rows
        sae.W_dec[:len(rows)] = rows
    return task, sae


def test_a_planted_absorption_gives_the_known_fraction():
    task, sae = _planted(absorbed=10)
    assert letters_measured(task) == list(range(26))
    r = absorption(sae, task)
    # letter b: 10 of its 40 words absorbed (fraction 1, fully); the other 25 letters: none
    assert r.absorption_letters == 26 and r.absorption_tokens == 26 * 40
    assert r.absorption_rate == pytest.approx(10 / 40 / 26, abs=1e-6)
    assert r.full_absorption_rate == pytest.approx(10 / 40 / 26, abs=1e-6)
    assert r.absorption_main_latents == 1.0  # the absorbers are not taken for main latents
    # below min_letters the rates are not reported
    assert torch.isnan(torch.tensor(absorption(sae, task, list(range(5))).absorption_rate))
    clean_task, clean_sae = _planted(absorbed=0)
    clean = absorption(clean_sae, clean_task)
    assert clean.absorption_rate == 0.0 and clean.full_absorption_rate == 0.0


def test_the_first_letter_task_is_computed_once_per_model_and_layer(tmp_path: Path):
    pytest.importorskip("transformers")
    from tiny_lm import ALPHA_WORDS, LAYER, tiny_lm

    from harness.evaluate.absorption_data import alpha_tokens, letter_task

    lm = tiny_lm(words=ALPHA_WORDS)
    assert len(alpha_tokens(lm.tokenizer)) == len(ALPHA_WORDS)  # the special tokens are not
    task, computed = letter_task(lm, LAYER, 400, tmp_path)
    assert computed and task.x_train.shape == (320, 32) and len(task.test_words) == 80
    assert [w[0] for w in task.test_words] == ["abcdefghijklmnopqrstuvwxyz"[i]
                                               for i in task.y_test.tolist()]
    again, computed = letter_task(lm, LAYER, 400, tmp_path)
    assert not computed and torch.equal(again.probe_weight, task.probe_weight)
    assert again.test_words == task.test_words
