"""The participation ratio the default learning rate reads: the dimensions the variance spreads
over, from the run's first tokens, measured once per source."""

from __future__ import annotations

import pytest
import torch

from harness.core.store import LocalStore
from harness.core.store.statistics import participation_ratio


def _source(tmp_path, x):
    LocalStore(tmp_path).put_activations("r", "L", x)
    return LocalStore(tmp_path).open("r", "L")


def test_isotropic_data_spreads_over_every_dimension_and_a_massive_one_over_one(tmp_path):
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(20_000, 32, generator=g)
    assert participation_ratio(_source(tmp_path / "a", iso)) == pytest.approx(32, rel=0.05)
    massive = iso.clone()
    massive[:, 0] *= 30.0  # one dimension with 900x the variance of the others
    assert participation_ratio(_source(tmp_path / "b", massive)) == pytest.approx(1.07, rel=0.05)


def test_it_reads_the_first_tokens_in_store_order_once(tmp_path):
    x = torch.randn(40_000, 8, generator=torch.Generator().manual_seed(1))
    x[20_000:, 0] *= 100.0  # past the sample: not read
    source = _source(tmp_path, x)
    first = participation_ratio(source, tokens=16_384)
    assert first == pytest.approx(8, rel=0.05) and source.participation == first
    source.shards.clear()  # a second call reads nothing
    assert participation_ratio(source) == first
