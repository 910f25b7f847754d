"""Reading SAE folders of every tool (harness.core.sae_formats) without their packages: each
format's forward pass is written out here from its source, and the reader must reproduce it or
refuse the folder naming the field; a forward-relevant field changed in a saved cfg.json must
change the reader's output or be refused, never be ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from random_saes import D, K, N, random_sae
from safetensors.torch import save_file

from harness import TopKSae
from harness.core.readback import CorruptFile
from harness.core.sae_formats import UnsupportedSae, read_sae

ACTIVATIONS = [("topk", K), ("batchtopk", K), ("jumprelu", None),
               ("matryoshka_batchtopk", K), ("relu", None)]


def _inputs(scale: float = 1.0) -> torch.Tensor:
    return torch.randn(256, D, generator=torch.Generator().manual_seed(7)) * scale


@torch.no_grad()
def _codes_and_out(sae: TopKSae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return sae.encode_dense(x), sae(x).reconstruction


@pytest.mark.parametrize(("activation", "k"), ACTIVATIONS)
def test_every_activation_reads_back_exactly_at_any_input_scale(tmp_path, activation, k):
    sae = random_sae(activation, k)
    back = read_sae(sae.save(tmp_path / "sae"))
    assert back.activation == activation and back.k == sae.k
    for scale in (1.0, 3.0):  # 3x: far more latents pass a threshold than in training
        x = _inputs(scale)
        for ours, theirs in zip(_codes_and_out(sae, x), _codes_and_out(back, x), strict=True):
            assert torch.equal(ours, theirs)


def test_batchtopk_inference_keeps_every_latent_above_its_threshold(tmp_path):
    """No candidate cap at inference: at 3x scale tokens have more than 4k latents above the
    threshold, and all of them are kept (SAELens' and dictionary_learning's rule)."""
    sae = random_sae("batchtopk", K)
    x = _inputs(3.0)
    with torch.no_grad():
        pre = sae.pre_activations(x)
        codes = sae.encode_dense(x)
    expected = torch.relu(pre) * (pre > sae.threshold)
    assert (expected > 0).sum(-1).max() > 4 * K
    assert torch.allclose(codes, expected, atol=1e-6)


def test_an_older_folder_of_ours_is_still_read(tmp_path):
    """Folders saved before the SAELens 6.x form: architecture = our name, a scalar threshold,
    activation_fn beside k_aux, no metadata."""
    sae = random_sae("batchtopk", K)
    folder = tmp_path / "old"
    folder.mkdir()
    save_file({"W_enc": sae.W_enc.detach().contiguous(), "b_enc": sae.b_enc.detach(),
               "W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach(),
               "threshold": sae.threshold.detach().clone()},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "batchtopk", "d_in": D, "d_sae": N, "k": K, "k_aux": 8,
        "dtype": "float32", "apply_b_dec_to_input": True, "normalize_activations": "none",
        "activation_fn": "batchtopk", "activation_fn_kwargs": {"k": K}, "threshold": 0.4}))
    back = read_sae(folder)
    x = _inputs(3.0)
    assert back.activation == "batchtopk"
    assert torch.equal(_codes_and_out(back, x)[1], _codes_and_out(sae, x)[1])


def _saelens_folder(tmp_path: Path, name: str, cfg: dict, tensors: dict) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()},
              str(folder / "sae_weights.safetensors"))
    base = {"d_in": D, "d_sae": N, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none",
            "reshape_activations": "none", "metadata": {"sae_lens_version": "6.54.12"}}
    (folder / "cfg.json").write_text(json.dumps({**base, **cfg}))
    return folder


def _saelens_tensors(seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D, N, generator=gen) * 0.4,
            "b_enc": torch.randn(N, generator=gen) * 0.3,
            "W_dec": torch.randn(N, D, generator=gen) * (torch.rand(N, 1, generator=gen) + 0.5),
            "b_dec": torch.randn(D, generator=gen)}


def _saelens_forward(t: dict[str, torch.Tensor], x: torch.Tensor, architecture: str,
                     k: int | None = None, apply_b_dec: bool = True,
                     rescale: bool = False) -> torch.Tensor:
    """SAELens 6.x inference, as its topk_sae.py, standard_sae.py and jumprelu_sae.py run it."""
    sae_in = x - t["b_dec"] * apply_b_dec
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    norms = t["W_dec"].norm(dim=-1)
    if rescale:
        pre = pre * norms
    if architecture == "topk":
        values, indices = pre.topk(k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    elif architecture == "jumprelu":
        acts = pre.relu() * (pre > t["threshold"])
    else:
        acts = pre.relu()
    if rescale:
        acts = acts / norms
    return acts @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize(("architecture", "cfg"), [
    ("topk", {"k": K}),
    ("topk", {"k": K, "apply_b_dec_to_input": False}),
    ("topk", {"k": K, "rescale_acts_by_decoder_norm": True}),
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("jumprelu", {}),
    ("jumprelu", {"apply_b_dec_to_input": False}),
])
def test_saelens_folders_are_read_with_their_settings_honoured(tmp_path, architecture, cfg):
    t = _saelens_tensors()
    if architecture == "jumprelu":  # one threshold negative: relu first, as SAELens does
        t["threshold"] = torch.rand(N, generator=torch.Generator().manual_seed(2)) * 0.6 - 0.1
    folder = _saelens_folder(tmp_path, "s", {"architecture": architecture, **cfg}, t)
    sae = read_sae(folder)
    for scale in (1.0, 3.0):
        x = _inputs(scale)
        expected = _saelens_forward(t, x, architecture, cfg.get("k"),
                                    cfg.get("apply_b_dec_to_input", True),
                                    cfg.get("rescale_acts_by_decoder_norm", False))
        assert torch.allclose(_codes_and_out(sae, x)[1], expected, atol=1e-5)


@pytest.mark.parametrize(("cfg", "says"), [
    ({"normalize_activations": "layer_norm"}, "normalize_activations 'layer_norm': each input "
                                              "is layer-normalised"),
    ({"normalize_activations": "constant_norm_rescale"}, "rescaled to norm sqrt(d_in)"),
    ({"normalize_activations": "expected_average_only_in"}, "a dataset constant the folder "
                                                            "does not hold"),
    ({"normalize_activations": "covariance_whitening"}, "whitened with statistics"),
    ({"reshape_activations": "hook_z"}, "reshape_activations 'hook_z'"),
    ({"architecture": "gated"}, "architecture 'gated' is not read"),
    ({"architecture": "temporal"}, "architecture 'temporal' is not read"),
])
def test_saelens_settings_that_cannot_be_run_exactly_are_refused(tmp_path, cfg, says):
    folder = _saelens_folder(tmp_path, "s", {"architecture": "standard", **cfg},
                             _saelens_tensors())
    with pytest.raises(UnsupportedSae, match=re_escape(says)):
        read_sae(folder)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


# a forward-relevant field of a saved cfg.json, the value it is changed to
PLANTED = [
    ("k", K + 3), ("apply_b_dec_to_input", False), ("rescale_acts_by_decoder_norm", True),
    ("architecture", "standard"), ("normalize_activations", "layer_norm"),
    ("reshape_activations", "hook_z"), ("d_in", D + 1), ("d_sae", N - 1),
    ("saesweep_activation", "relu"),
]


@pytest.mark.parametrize(("field", "value"), PLANTED, ids=[p[0] for p in PLANTED])
def test_a_changed_forward_field_changes_the_output_or_is_refused(tmp_path, field, value):
    sae = random_sae("topk", K)
    folder = sae.save(tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg[field] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))
    x = _inputs()
    try:
        changed = read_sae(folder)
    except (UnsupportedSae, CorruptFile) as e:
        assert field in str(e) or "shape" in str(e), e
        return
    assert not torch.allclose(_codes_and_out(changed, x)[1], _codes_and_out(sae, x)[1])


def test_sparsify_folders_are_read_as_its_forward_pass_runs(tmp_path):
    gen = torch.Generator().manual_seed(3)
    w = {"encoder.weight": torch.randn(N, D, generator=gen) * 0.4,
         "encoder.bias": torch.randn(N, generator=gen) * 0.2,
         "W_dec": torch.randn(N, D, generator=gen), "b_dec": torch.randn(D, generator=gen)}
    folder = tmp_path / "sparsify"
    folder.mkdir()
    save_file(w, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 3, "normalize_decoder": True,
           "num_latents": 0, "k": K, "multi_topk": False, "skip_connection": False,
           "transcode": False, "d_in": D}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae = read_sae(folder)
    x = _inputs(3.0)
    # sparsify's sparse_coder.py and fused_encoder.py: top-k of relu(linear(x - b_dec))
    pre = torch.relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
    values, indices = pre.topk(K, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, indices, values) @ w["W_dec"] + w["b_dec"]
    assert torch.allclose(_codes_and_out(sae, x)[1], expected, atol=1e-5)
    (folder / "cfg.json").write_text(json.dumps({**cfg, "activation": "groupmax"}))
    with pytest.raises(UnsupportedSae, match=re_escape("activation 'groupmax'")):
        read_sae(folder)
    # its transcoders (x not centred) and skip connections (x @ W_skip.T added), exactly
    skip = torch.randn(D, D) * 0.1
    save_file({**w, "W_skip": skip}, str(folder / "sae.safetensors"))
    for transcode in (False, True):
        (folder / "cfg.json").write_text(json.dumps({**cfg, "transcode": transcode,
                                                     "skip_connection": True}))
        sae = read_sae(folder)
        assert sae.transcoder and sae.skip
        centred = x if transcode else x - w["b_dec"]
        pre = torch.relu(centred @ w["encoder.weight"].T + w["encoder.bias"])
        values, indices = pre.topk(K, dim=-1)
        expected = (torch.zeros_like(pre).scatter(-1, indices, values) @ w["W_dec"]
                    + w["b_dec"] + x @ skip.T)
        assert torch.allclose(_codes_and_out(sae, x)[1], expected, atol=1e-4)


def _dl_folder(tmp_path: Path, name: str, state: dict, trainer: dict | None) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    torch.save(state, folder / "ae.pt")
    if trainer is not None:
        (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
    return folder


def test_dictionary_learning_folders_are_read_as_its_classes_run(tmp_path):
    """Each class's state dict as its nn.Modules name it, and its encode/decode written out from
    dictionary_learning's dictionary.py and trainers/ (inference: use_threshold where it is the
    default)."""
    gen = torch.Generator().manual_seed(4)
    enc, b_enc = torch.randn(N, D, generator=gen) * 0.4, torch.randn(N, generator=gen) * 0.2
    dec, b_dec = torch.randn(D, N, generator=gen), torch.randn(D, generator=gen)
    x = _inputs(3.0)
    relu_pre = torch.relu((x - b_dec) @ enc.T + b_enc)
    topk = relu_pre.topk(K, dim=-1)
    cases = {
        "AutoEncoder": ({"encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec,
                         "bias": b_dec}, relu_pre),
        "AutoEncoderTopK": ({"encoder.weight": enc, "encoder.bias": b_enc,
                             "decoder.weight": dec, "b_dec": b_dec, "k": torch.tensor(K),
                             "threshold": torch.tensor(0.3)},
                            torch.zeros_like(relu_pre).scatter(-1, topk.indices, topk.values)),
        "BatchTopKSAE": ({"encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec,
                          "b_dec": b_dec, "k": torch.tensor(K), "threshold": torch.tensor(0.3)},
                         relu_pre * (relu_pre > 0.3)),
    }
    for dict_class, (state, acts) in cases.items():
        sae = read_sae(_dl_folder(tmp_path, dict_class, state, {"dict_class": dict_class}))
        assert torch.allclose(_codes_and_out(sae, x)[1], acts @ dec.T + b_dec, atol=1e-5), \
            dict_class
    matryoshka = {"W_enc": enc.T.contiguous(), "b_enc": b_enc, "W_dec": dec.T.contiguous(),
                  "b_dec": b_dec, "k": torch.tensor(K), "threshold": torch.tensor(0.3),
                  "group_sizes": torch.tensor([12, 36])}
    sae = read_sae(_dl_folder(tmp_path, "m", matryoshka, {"dict_class": "MatryoshkaBatchTopKSAE"}))
    assert sae.activation == "matryoshka_batchtopk" and sae.activation_fn.fractions == (0.25,)
    assert torch.allclose(_codes_and_out(sae, x)[1],
                          (relu_pre * (relu_pre > 0.3)) @ dec.T + b_dec, atol=1e-5)
    threshold = torch.rand(N, generator=gen) * 0.5
    jump = {"W_enc": enc.T.contiguous(), "b_enc": b_enc, "W_dec": dec.T.contiguous(),
            "b_dec": b_dec, "threshold": threshold}
    pre = x @ enc.T + b_enc  # its apply_b_dec_to_input is False by default
    sae = read_sae(_dl_folder(tmp_path, "j", jump, None))
    assert torch.allclose(_codes_and_out(sae, x)[1],
                          torch.relu(pre * (pre > threshold)) @ dec.T + b_dec, atol=1e-5)


def test_dictionary_learning_folders_it_cannot_read_are_refused(tmp_path):
    ambiguous = _dl_folder(tmp_path, "a", {"encoder.weight": torch.zeros(N, D),
                                           "encoder.bias": torch.zeros(N),
                                           "decoder.weight": torch.zeros(D, N),
                                           "b_dec": torch.zeros(D), "k": torch.tensor(K),
                                           "threshold": torch.tensor(0.1)}, None)
    with pytest.raises(UnsupportedSae, match="AutoEncoderTopK and BatchTopKSAE hold the same"):
        read_sae(ambiguous)
    gated = _dl_folder(tmp_path, "g", {"x": torch.zeros(1)}, {"dict_class": "GatedAutoEncoder"})
    with pytest.raises(UnsupportedSae, match="trainer.dict_class 'GatedAutoEncoder' is not read"):
        read_sae(gated)
    pickled = _dl_folder(tmp_path, "p", {"module": torch.nn.Linear(2, 2)}, None)
    with pytest.raises(UnsupportedSae, match="never unpickles code"):
        read_sae(pickled)


def test_a_folder_no_format_claims_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SAE config here; expected ae.pt"):
        read_sae(tmp_path)
