"""Interoperability with the tools themselves installed (`pip install -e ".[interop]"`: sae-lens
and eai-sparsify at the versions docs/architectures.md names): every activation we train loads in
SAELens with the same codes and reconstructions; SAELens' inference SAEs and training checkpoints
and sparsify's folders read here as their own forward passes run; what cannot be read exactly is
refused; the unit-norm export folds in SAELens as it does here. Skipped where they are not
installed (.ci/run installs them in a step of its own)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from scripts_run import cli_here

from harness import SaeTrainer, SaeTrainingConfig, TopKSae
from harness.core.sae_formats import UnsupportedSae, read_sae

sae_lens = pytest.importorskip("sae_lens", reason="interop tests need: pip install -e "
                               "'.[interop]'")
pytestmark = pytest.mark.filterwarnings("ignore")
TOLERANCE = 1e-5
D = 16


def _inputs(store: Path, scale: float) -> torch.Tensor:
    """Rows of the synthetic store (in distribution), times `scale`."""
    from harness.core.store import open_store

    source = open_store(store).open("syn", "synthetic")
    return source.read_shard(len(source.shards) - 1)[:512].float() * scale


@pytest.fixture(scope="module")
def trained(synthetic_store, tmp_path_factory) -> dict[str, Path]:
    """One small SAE of each activation, trained through the seed API and saved."""
    out = {}
    for activation, k, extra in (("topk", 4, {}), ("batchtopk", 4, {}),
                                 ("matryoshka_batchtopk", 4, {}),
                                 ("jumprelu", None, {"l0_lambda": 1e-3}),
                                 ("relu", None, {"l1_lambda": 1e-3})):
        sae = TopKSae(64, D, k, activation=activation, seed=0)
        folder = tmp_path_factory.mktemp(activation)
        config = SaeTrainingConfig(epochs=1, batch_size=256, progress=False, **extra)
        SaeTrainer(sae).train(store=synthetic_store, run_id="syn", layer_signature="synthetic",
                              config=config, save_dir=folder)
        out[activation] = folder
    return out


@pytest.mark.parametrize("activation", ["topk", "batchtopk", "matryoshka_batchtopk",
                                        "jumprelu", "relu"])
def test_every_activation_loads_in_saelens_with_identical_outputs(trained, synthetic_store,
                                                                   activation):
    folder = trained[activation]
    ours = TopKSae.load(folder)
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    for scale in (1.0, 3.0):
        x = _inputs(synthetic_store, scale)
        with torch.no_grad():
            codes = (ours.encode_dense(x) - theirs.encode(x)).abs().max()
            recon = (ours(x).reconstruction - theirs(x)).abs().max()
        assert codes <= TOLERANCE and recon <= TOLERANCE, (activation, scale, codes, recon)


def _random_(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random; thresholds in the range pre-activations take."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if "threshold" not in name
                                                           else 0.2) + (0.2 * ("thresh" in name)))
        for name, b in module.named_buffers():
            if "threshold" in name:
                b.fill_(0.25)


@pytest.mark.parametrize(("config", "fields"), [
    ("StandardSAEConfig", {}),
    ("StandardSAEConfig", {"apply_b_dec_to_input": False}),
    ("TopKSAEConfig", {"k": 4}),
    ("TopKSAEConfig", {"k": 4, "apply_b_dec_to_input": False}),
    ("TopKSAEConfig", {"k": 4, "rescale_acts_by_decoder_norm": True}),
    ("JumpReLUSAEConfig", {}),
    ("JumpReLUSAEConfig", {"apply_b_dec_to_input": False}),
])
def test_saelens_inference_saes_read_as_saelens_runs_them(tmp_path, synthetic_store, config,
                                                          fields):
    cfg = getattr(sae_lens.saes, config)(d_in=D, d_sae=64, **fields)
    sae = sae_lens.SAE.from_dict(cfg.to_dict())
    _random_(sae)
    sae.save_model(tmp_path / "s")
    ours = read_sae(tmp_path / "s")
    for scale in (1.0, 3.0):
        x = _inputs(synthetic_store, scale)
        with torch.no_grad():
            assert (ours(x).reconstruction - sae(x)).abs().max() <= TOLERANCE
            assert (ours.encode_dense(x) - sae.encode(x)).abs().max() <= TOLERANCE


@pytest.mark.parametrize(("config", "fields"), [
    ("BatchTopKTrainingSAEConfig", {"k": 4}),
    ("MatryoshkaBatchTopKTrainingSAEConfig", {"k": 4, "matryoshka_widths": [16, 64]}),
    ("JumpReLUTrainingSAEConfig", {}),
    ("TopKTrainingSAEConfig", {"k": 4}),
    ("StandardTrainingSAEConfig", {}),
])
def test_saelens_training_checkpoints_read_as_their_inference_form(tmp_path, synthetic_store,
                                                                    config, fields):
    """A checkpoint SAELens' trainer saves, read here, runs as SAELens' own inference form of it
    (save_inference_model: BatchTopK and Matryoshka become JumpReLU)."""
    from sae_lens.saes.sae import TrainingSAE

    cfg = getattr(sae_lens.saes, config)(d_in=D, d_sae=64, **fields)
    sae = TrainingSAE.from_dict(cfg.to_dict())
    _random_(sae)
    sae.save_model(tmp_path / "checkpoint")
    sae.save_inference_model(tmp_path / "inference")
    reference = sae_lens.SAE.load_from_disk(str(tmp_path / "inference"))
    ours = read_sae(tmp_path / "checkpoint")
    for scale in (1.0, 3.0):
        x = _inputs(synthetic_store, scale)
        with torch.no_grad():
            assert (ours(x).reconstruction - reference(x)).abs().max() <= TOLERANCE, scale


@pytest.mark.parametrize("normalize", ["layer_norm", "constant_norm_rescale",
                                       "expected_average_only_in"])
def test_saelens_settings_this_harness_cannot_run_are_refused(tmp_path, normalize):
    cfg = sae_lens.saes.StandardSAEConfig(d_in=D, d_sae=64, normalize_activations=normalize)
    sae_lens.SAE.from_dict(cfg.to_dict()).save_model(tmp_path / "s")
    with pytest.raises(UnsupportedSae, match=f"normalize_activations '{normalize}'"):
        read_sae(tmp_path / "s")


def test_sparsify_folders_read_as_sparsify_runs_them(tmp_path, synthetic_store):
    sparsify = pytest.importorskip("sparsify")
    coder = sparsify.SparseCoder(D, sparsify.SparseCoderConfig(expansion_factor=4, k=4))
    _random_(coder)
    coder.save_to_disk(tmp_path / "sparsify")
    ours = read_sae(tmp_path / "sparsify")
    x = _inputs(synthetic_store, 3.0)
    with torch.no_grad():
        top_acts, top_indices, _ = coder.encode(x)
        theirs = coder.decode(top_acts, top_indices)
        assert (ours(x).reconstruction - theirs).abs().max() <= TOLERANCE
    cfg = json.loads((tmp_path / "sparsify" / "cfg.json").read_text())
    (tmp_path / "sparsify" / "cfg.json").write_text(json.dumps({**cfg, "activation": "groupmax"}))
    with pytest.raises(UnsupportedSae, match="groupmax"):
        read_sae(tmp_path / "sparsify")


@pytest.mark.parametrize(("transcode", "skip"), [(True, False), (True, True), (False, True)])
def test_sparsify_transcoders_read_as_sparsify_runs_them(tmp_path, synthetic_store, transcode,
                                                         skip):
    """sparsify's own forward pass (decode plus the skip path) against ours of its folder."""
    sparsify = pytest.importorskip("sparsify")
    coder = sparsify.SparseCoder(D, sparsify.SparseCoderConfig(
        expansion_factor=4, k=4, transcode=transcode, skip_connection=skip))
    _random_(coder)
    coder.save_to_disk(tmp_path / "coder")
    ours = read_sae(tmp_path / "coder")
    assert ours.transcoder and ours.skip == skip
    x = _inputs(synthetic_store, 3.0)
    with torch.no_grad():
        top_acts, top_indices, _ = coder.encode(x)
        theirs = coder.decode(top_acts, top_indices)
        if skip:
            theirs = theirs + x @ coder.W_skip.mT
        assert (ours(x).reconstruction - theirs).abs().max() <= TOLERANCE


@pytest.mark.parametrize("activation", ["batchtopk", "jumprelu", "relu"])
def test_the_unit_norm_export_folds_in_saelens_as_it_does_here(trained, synthetic_store,
                                                               tmp_path, capsys, activation):
    from harness.export.cli import main

    out = tmp_path / "export"
    proc = cli_here(capsys, main, str(trained[activation]), str(out), "--unit-norm-decoder")
    assert proc.returncode == 0, proc.stderr
    assert "largest reconstruction difference" in proc.stdout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folded = sae_lens.SAE.load_from_disk(str(out), fold_W_dec_norm=True)
    original = TopKSae.load(trained[activation])
    x = _inputs(synthetic_store, 1.0)
    with torch.no_grad():
        assert torch.allclose(folded.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
        assert (folded(x) - original(x).reconstruction).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def transcoders(tmp_path_factory) -> tuple[Path, dict[tuple[str, bool], Path]]:
    """A synthetic pair (d_in 16, d_out 12) and a small transcoder of each activation SAELens
    has a transcoder class for, with and without the skip path, trained and saved."""
    from harness.data.synthetic import SyntheticSpec, write_synthetic_store

    base = tmp_path_factory.mktemp("pair")
    write_synthetic_store(base, "pair", SyntheticSpec(d=D, n_features=32, mean_active=3,
                                                      d_out=12, target_linear=0.5,
                                                      n_tokens=4000), shard_tokens=2000)
    out = {}
    for activation, k, extra in (("batchtopk", 4, {}), ("matryoshka_batchtopk", 4, {}),
                                 ("jumprelu", None, {"l0_lambda": 1e-3}),
                                 ("relu", None, {"l1_lambda": 1e-3})):
        for skip in (False, True):
            sae = TopKSae(64, D, k, n_outputs=12, skip=skip, activation=activation, seed=0)
            folder = tmp_path_factory.mktemp(f"{activation}-{skip}")
            SaeTrainer(sae).train(
                store=base, run_id="pair", layer_signature="synthetic",
                target_layer_signature="synthetic.target", save_dir=folder,
                config=SaeTrainingConfig(epochs=1, batch_size=256, progress=False, **extra))
            out[(activation, skip)] = folder
    return base, out


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("activation", ["batchtopk", "matryoshka_batchtopk", "jumprelu", "relu"])
def test_transcoders_load_in_saelens_with_identical_outputs(transcoders, activation, skip):
    from harness.core.store import open_store

    base, folders = transcoders
    folder = folders[(activation, skip)]
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name_out"] == "synthetic.target"
    ours = TopKSae.load(folder)
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    assert type(theirs).__name__ == {
        (False, "relu"): "Transcoder", (True, "relu"): "SkipTranscoder"}.get(
        (skip, activation), "JumpReLUSkipTranscoder" if skip else "JumpReLUTranscoder")
    x = open_store(base).open("pair", "synthetic").read_shard(1)[:512].float()
    with torch.no_grad():
        codes = (ours.encode_dense(x) - theirs.encode(x)).abs().max()
        recon = (ours(x).reconstruction - theirs(x)).abs().max()
    assert codes <= TOLERANCE and recon <= TOLERANCE, (codes, recon)


@pytest.mark.parametrize("config", ["TranscoderConfig", "SkipTranscoderConfig",
                                    "JumpReLUTranscoderConfig", "JumpReLUSkipTranscoderConfig"])
def test_saelens_transcoders_read_as_saelens_runs_them(tmp_path, config):
    cfg = getattr(sae_lens, config)(d_in=D, d_sae=32, d_out=12, apply_b_dec_to_input=False)
    theirs = sae_lens.SAE.from_dict(cfg.to_dict())
    _random_(theirs)
    theirs.save_model(str(tmp_path))
    ours = read_sae(tmp_path)
    assert ours.transcoder and ours.n_outputs == 12 and ours.skip == ("Skip" in config)
    x = torch.randn(256, D)
    with torch.no_grad():
        codes = (ours.encode_dense(x) - theirs.encode(x)).abs().max()
        recon = (ours(x).reconstruction - theirs(x)).abs().max()
    assert codes <= TOLERANCE and recon <= TOLERANCE, (config, codes, recon)
