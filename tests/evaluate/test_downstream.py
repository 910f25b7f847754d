"""Downstream (spliced) metrics on a tiny random causal LM: invariants, BOS masking, and the
values against a direct computation with hooks written here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_lm import HIDDEN, LAYER, text_file, tiny_lm

from harness.core.sae import TopKSae
from harness.evaluate.downstream import DownstreamConfig, DownstreamEvaluator, Reference

SEQ = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("downstream")
    text = text_file(folder)
    cfg = DownstreamConfig(model="tiny", layer=LAYER, text=str(text), windows=6, seq_len=SEQ,
                           batch_windows=4)
    lm = tiny_lm()
    return lm, cfg, DownstreamEvaluator(lm, cfg, cache_dir=folder / "cache"), folder


def identity(x):
    return x, torch.tensor(float(x.numel()))


def zeros(x):
    return torch.zeros_like(x), 0.0


def test_identity_splice_loses_nothing(setup):
    _, _, ev, _ = setup
    m = ev.evaluate(identity)
    assert abs(m.delta_ce) < 1e-6 and abs(m.kl) < 1e-6 and m.fvu < 1e-12
    assert m.ce_loss_score == pytest.approx(1.0, abs=1e-5)
    assert m.kl_score == pytest.approx(1.0, abs=1e-5)
    assert m.ce_zero > m.ce_orig  # ablating a layer's output must cost something


def test_zero_splice_scores_zero(setup):
    _, _, ev, _ = setup
    m = ev.evaluate(zeros)
    assert m.ce_loss_score == pytest.approx(0.0, abs=1e-6)
    assert m.kl_score == pytest.approx(0.0, abs=1e-6)
    assert m.ce_sae == pytest.approx(m.ce_zero, abs=1e-6) and m.l0 == 0


def test_bos_and_special_positions_are_neither_spliced_nor_scored(setup):
    lm, _, ev, _ = setup
    w = ev.reference.windows
    assert bool((w.ids[:, 0] == lm.bos_id).all()) and not bool(w.kept[:, 0].any())
    assert not bool(w.kept[:, SEQ].any())  # the last position has no next token
    sep = lm.tokenizer.convert_tokens_to_ids("<sep>")
    assert bool((w.ids == sep).any()) and not bool(w.kept[w.ids == sep].any())
    seen = []

    def counting(x):
        seen.append(x.shape[0])
        return x, 0.0

    m = ev.evaluate(counting)
    assert sum(seen) == m.tokens == w.n_kept == 6 * (SEQ - 1) - int((w.ids == sep).sum())


def _direct(lm, ids, kept, sae):
    """CE and KL by hand: hooks on the layer output, the BOS and last positions untouched."""
    model = lm.model
    layer = model.get_submodule(LAYER)

    def run(fn):
        def hook(_m, _i, out):
            act = out[0] if isinstance(out, tuple) else out
            if fn is None:
                return None
            new = act.clone()
            for b in range(act.shape[0]):
                for t in range(act.shape[1]):
                    if kept[b, t]:
                        new[b, t] = fn(act[b, t:t + 1])[0]
            return (new, *out[1:]) if isinstance(out, tuple) else new
        h = layer.register_forward_hook(hook)
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        h.remove()
        return F.log_softmax(logits[:, :-1], dim=-1)

    clean, spliced = run(None), run(lambda x: sae(x).reconstruction)
    zero = run(lambda x: torch.zeros_like(x))
    targets = ids[:, 1:]
    mask = kept[:, :-1]

    def ce(lp):
        return float(-lp.gather(2, targets[..., None]).squeeze(-1)[mask].double().mean())

    def kl(lq):
        return float((clean.exp() * (clean - lq)).sum(-1)[mask].double().mean())

    ce_o, ce_s, ce_z = ce(clean), ce(spliced), ce(zero)
    return {"ce_loss_score": (ce_z - ce_s) / (ce_z - ce_o), "delta_ce": ce_s - ce_o,
            "kl": kl(spliced), "kl_score": (kl(zero) - kl(spliced)) / kl(zero)}


def test_metrics_match_a_direct_computation(setup):
    lm, _, ev, _ = setup
    sae = TopKSae(4 * HIDDEN, HIDDEN, 4, seed=3)
    m = ev.evaluate(sae)
    w = ev.reference.windows
    want = _direct(lm, w.ids, w.kept, sae)
    assert m.kl > 1e-4 and m.delta_ce > 1e-4  # a random SAE is far from exact
    for name, value in want.items():
        assert getattr(m, name) == pytest.approx(value, abs=1e-5), name


def test_reference_is_cached_and_reused(setup, monkeypatch):
    lm, cfg, ev, folder = setup
    files = list((folder / "cache").glob("reference-*.safetensors"))
    assert len(files) == 1
    back = Reference.load(files[0], ev.reference.key)
    assert back is not None and torch.equal(back.ce_zero, ev.reference.ce_zero)
    assert Reference.load(files[0], "another-key") is None
    cut = folder / "cut.safetensors"
    cut.write_bytes(files[0].read_bytes()[:100])  # a write cut short: computed again, not fatal
    assert Reference.load(cut, ev.reference.key) is None

    def fail(*_a, **_k):
        raise AssertionError("the reference was recomputed")

    monkeypatch.setattr(DownstreamEvaluator, "_compute_reference", fail)
    again = DownstreamEvaluator(lm, cfg, cache_dir=folder / "cache")
    assert again.evaluate(zeros).ce_zero == ev.evaluate(zeros).ce_zero
    assert ev.computed and not again.computed


def test_an_sae_of_another_width_is_refused(setup):
    _, _, ev, _ = setup
    with pytest.raises(ValueError, match="width 32"):
        ev.evaluate(TopKSae(64, HIDDEN + 1, 4))


def test_too_little_text_is_refused(tmp_path: Path):
    from harness.core.store import StoreError

    cfg = DownstreamConfig(model="tiny", layer=LAYER, text=str(text_file(tmp_path)),
                           windows=500, seq_len=SEQ)
    with pytest.raises(StoreError, match="only .* windows"):
        DownstreamEvaluator(tiny_lm(), cfg)


def test_a_transcoder_is_spliced_on_the_modules_input(tmp_path: Path):
    """An identity module in the model: a perfect transcoder (its skip path the identity) loses
    nothing; one whose output is zero scores as zero ablation; a transcoder of the wrong width is
    refused."""
    lm = tiny_lm()
    layers = lm.model.model.layers
    layers[1].mlp = torch.nn.Sequential(torch.nn.Identity(), layers[1].mlp)
    cfg = DownstreamConfig(model="tiny", layer="model.layers.1.mlp.0",
                           text=str(text_file(tmp_path)), windows=6, seq_len=SEQ,
                           batch_windows=4)
    ev = DownstreamEvaluator(lm, cfg)
    perfect = TopKSae(64, HIDDEN, 4, skip=True, seed=0)
    with torch.no_grad():
        perfect.W_dec.zero_()
        perfect.W_skip.copy_(torch.eye(HIDDEN))
    m = ev.evaluate(perfect)
    assert abs(m.delta_ce) < 1e-6 and abs(m.kl) < 1e-6 and m.fvu < 1e-10
    assert m.ce_zero != m.ce_orig  # the random model: ablating its MLP changes its predictions
    with torch.no_grad():
        perfect.W_skip.zero_()
    m = ev.evaluate(perfect)  # nothing but b_dec = 0 comes out: the zero ablation
    assert m.ce_loss_score == pytest.approx(0.0, abs=1e-6) and m.fvu == pytest.approx(1.0,
                                                                                       abs=0.2)
    with pytest.raises(ValueError, match="d_out=8"):
        ev.evaluate(TopKSae(64, HIDDEN, 4, n_outputs=8))
