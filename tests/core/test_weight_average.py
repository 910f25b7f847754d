"""The moving average of the weights that a run ends with."""

from __future__ import annotations

import torch

from harness.core.sae import TopKSae
from harness.core.training import SaeTrainer, SaeTrainingConfig
from harness.core.training.weight_average import WeightAverage


def test_the_average_follows_the_weights_with_its_beta() -> None:
    sae = TopKSae(8, 4, 2, seed=0)
    assert WeightAverage.for_run(sae, 0.08, 20) is None  # a 1.6-step window: the last weights
    average = WeightAverage.for_run(sae, 0.1, 40)
    assert average is not None and average.beta == 0.75
    start = sae.W_dec.detach().clone()
    with torch.no_grad():
        sae.W_dec.add_(1.0)
    average.update(sae)
    average.update(sae)
    average.apply_(sae)
    # two updates towards start + 1: 1 - 0.75^2 of the way
    torch.testing.assert_close(sae.W_dec.detach(), start + (1 - 0.75**2))


def test_a_run_ends_with_the_average_and_its_evaluation_scores_it(synthetic_store) -> None:
    def train(fraction: float):
        sae = TopKSae(64, 16, 4, seed=0)
        cfg = SaeTrainingConfig(epochs=2, batch_size=256, progress=False, decoder_refit=False,
                                weight_average_fraction=fraction)
        history = SaeTrainer(sae).train(store=synthetic_store, run_id="syn",
                                        layer_signature="synthetic", config=cfg, save_dir=None)
        return sae, history

    last, h_last = train(0.0)
    averaged, h_avg = train(0.1)
    assert h_avg["fvu"][0] == h_last["fvu"][0]  # the same steps until the end
    assert not torch.equal(averaged.W_dec, last.W_dec)
    # the final evaluation scored the averaged weights, not the last ones
    assert h_avg["fvu"][-1] != h_last["fvu"][-1]
