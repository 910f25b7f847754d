"""SAE folders as Reconstructors: ours (TopK, BatchTopK) and SAELens' (TopK, standard ReLU,
JumpReLU), read from `cfg.json` and `sae_weights.safetensors` without running any code."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from harness.core.sae import ACTIVATIONS, CONFIG_FILE, WEIGHTS_FILE, TopKSae
from harness.evaluate.downstream import Reconstructor, sae_reconstructor


def load_reconstructor(folder: str | Path, device: str = "cpu") -> tuple[Reconstructor, int]:
    """(reconstructor, d_in) of the SAE saved in `folder`; ValueError/FileNotFoundError name the
    file and what is wrong."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no SAE config here")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_path}: not a JSON SAE config ({e})") from e
    architecture = cfg.get("architecture", "topk")
    if architecture in ACTIVATIONS:
        sae = TopKSae.load(folder, device=device)
        return sae_reconstructor(sae), sae.n_inputs
    if architecture not in ("standard", "jumprelu"):
        raise ValueError(f"{cfg_path}: architecture {architecture!r} is not one of "
                         f"{[*ACTIVATIONS, 'standard', 'jumprelu']}")
    w = load_file(str(folder / WEIGHTS_FILE), device=device)
    needed = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if architecture == "jumprelu"
                                                     else set())
    missing = needed - w.keys()
    if missing:
        raise ValueError(f"{folder / WEIGHTS_FILE}: missing tensors {sorted(missing)}")
    subtract = bool(cfg.get("apply_b_dec_to_input", True))

    @torch.no_grad()
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xin = x.to(w["W_enc"])
        pre = (xin - w["b_dec"] if subtract else xin) @ w["W_enc"] + w["b_enc"]
        z = pre * (pre > w["threshold"]) if architecture == "jumprelu" else torch.relu(pre)
        return (z @ w["W_dec"] + w["b_dec"]).to(x), (z > 0).sum()

    return run, int(w["W_enc"].shape[0])
