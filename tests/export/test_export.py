"""python -m harness.export: any SAE folder written as a SAELens folder, with decoder rows of
unit norm where that is exact, checked against the original; refused where it is not."""

from __future__ import annotations

import torch
from random_saes import random_sae
from scripts_run import cli_here, documented_flags

from harness import TopKSae
from harness.export.arguments import build_parser
from harness.export.cli import main


def test_a_unit_norm_export_reconstructs_as_the_original(tmp_path, capsys):
    for activation, k in (("batchtopk", 4), ("jumprelu", None), ("relu", None),
                          ("matryoshka_batchtopk", 4)):
        sae = random_sae(activation, k)
        out = tmp_path / f"{activation}_out"
        proc = cli_here(capsys, main, str(sae.save(tmp_path / activation)), str(out),
                        "--unit-norm-decoder")
        assert proc.returncode == 0, proc.stderr
        diff = float(proc.stdout.rsplit(":", 1)[1])
        assert diff < 1e-4
        exported = TopKSae.load(out)
        assert exported.activation == ("relu" if activation == "relu" else "jumprelu")
        assert torch.allclose(exported.W_dec.norm(dim=1), torch.ones(exported.n_latents))
        x = torch.randn(128, exported.n_inputs) * 3
        with torch.no_grad():
            assert torch.allclose(exported(x).reconstruction, sae(x).reconstruction, atol=1e-4)


def test_a_topk_sae_is_refused_and_nothing_is_overwritten(tmp_path, capsys):
    folder = random_sae("topk", 4).save(tmp_path / "topk")
    proc = cli_here(capsys, main, str(folder), str(tmp_path / "out"), "--unit-norm-decoder")
    assert proc.returncode == 2 and "cannot be made unit norm exactly" in proc.stderr
    assert not (tmp_path / "out").exists()
    plain = cli_here(capsys, main, str(folder), str(tmp_path / "out"))  # as it is: exact
    assert plain.returncode == 0 and float(plain.stdout.rsplit(":", 1)[1]) == 0.0
    again = cli_here(capsys, main, str(folder), str(tmp_path / "out"))
    assert again.returncode == 2 and "exists and is not an empty folder" in again.stderr


def test_every_flag_has_help_and_is_documented():
    assert documented_flags(build_parser()) == []
