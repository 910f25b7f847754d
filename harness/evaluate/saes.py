"""SAE folders as Reconstructors: ours (TopK, BatchTopK) and SAELens' (TopK, standard ReLU,
JumpReLU), read from `cfg.json` and `sae_weights.safetensors` without running any code."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.core.readback import CorruptFile, check_shapes, read_json, read_safetensors
from harness.core.sae import ACTIVATIONS, CONFIG_FILE, WEIGHTS_FILE, TopKSae
from harness.evaluate.downstream import Reconstructor, sae_reconstructor


def load_reconstructor(folder: str | Path, device: str = "cpu") -> tuple[Reconstructor, int]:
    """(reconstructor, d_in) of the SAE saved in `folder`; ValueError/FileNotFoundError name the
    file and what is wrong."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no SAE config here")
    cfg = read_json(cfg_path)
    architecture = cfg.get("architecture", "topk")
    if architecture in ACTIVATIONS:
        sae = TopKSae.load(folder, device=device)
        return sae_reconstructor(sae), sae.n_inputs
    if architecture not in ("standard", "jumprelu"):
        raise ValueError(f"{cfg_path}: architecture {architecture!r} is not one of "
                         f"{[*ACTIVATIONS, 'standard', 'jumprelu']}")
    w = read_safetensors(folder / WEIGHTS_FILE, device=device)
    needed = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if architecture == "jumprelu"
                                                     else set())
    missing = needed - w.keys()
    if missing:
        raise CorruptFile(f"{folder / WEIGHTS_FILE}: missing tensors {sorted(missing)}")
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    if not isinstance(d_in, int) or not isinstance(d_sae, int):
        raise CorruptFile(f"{cfg_path}: d_in and d_sae must be whole numbers, got {d_in!r}, "
                          f"{d_sae!r}")
    check_shapes(folder / WEIGHTS_FILE, w, {
        "W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
        **({"threshold": (d_sae,)} if architecture == "jumprelu" else {})})
    subtract = bool(cfg.get("apply_b_dec_to_input", True))

    @torch.no_grad()
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xin = x.to(w["W_enc"])
        pre = (xin - w["b_dec"] if subtract else xin) @ w["W_enc"] + w["b_enc"]
        z = pre * (pre > w["threshold"]) if architecture == "jumprelu" else torch.relu(pre)
        return (z @ w["W_dec"] + w["b_dec"]).to(x), (z > 0).sum()

    return run, int(w["W_enc"].shape[0])
