"""EleutherAI sparsify's folders (`SparseCoder.save_to_disk`): cfg.json + sae.safetensors.

Its forward pass: acts = top-k of relu((x - b_dec) @ encoder.weight.T + encoder.bias), x_hat =
acts @ W_dec + b_dec; ours is the same (the top k of relu(pre) are relu of the top k of pre).
Its transcoders (`transcode: true`: x is not centred by b_dec; the output's width is d_in) and
skip connections (`W_skip` [d_in, d_in], x @ W_skip.T added) read as our transcoders, an SAE
with a skip connection with its centring folded into b_enc. `activation: groupmax` is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from harness.core.readback import CorruptFile, check_shapes, read_json, read_safetensors
from harness.core.sae_formats.errors import UnsupportedSae

if TYPE_CHECKING:
    from harness.core.sae import SparseAutoencoder

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


class SparsifyFormat:
    """cfg.json + sae.safetensors."""

    name: ClassVar[str] = "sparsify"
    files: ClassVar[str] = "cfg.json + sae.safetensors"

    @staticmethod
    def claims(folder: Path) -> bool:
        return (folder / WEIGHTS_FILE).is_file()

    @staticmethod
    def read(folder: Path, device: torch.device | str = "cpu") -> SparseAutoencoder:
        from harness.core.sae import SparseAutoencoder

        cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        cfg = read_json(cfg_path)
        activation = cfg.get("activation", "topk")
        if activation != "topk":
            raise UnsupportedSae(f"{cfg_path}: activation {activation!r}: only topk is read "
                                 "(groupmax keeps one latent per group, a forward pass this "
                                 "harness does not run)")
        transcode, skip = bool(cfg.get("transcode")), bool(cfg.get("skip_connection"))
        d_in, k = cfg.get("d_in"), cfg.get("k")
        for key, value in (("d_in", d_in), ("k", k)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CorruptFile(f"{cfg_path}: {key} must be a whole number >= 1, got "
                                  f"{value!r}")
        w = read_safetensors(weights_path)
        missing = ({"encoder.weight", "encoder.bias", "W_dec", "b_dec"}
                   | ({"W_skip"} if skip else set())) - w.keys()
        if missing:
            raise CorruptFile(f"{weights_path}: missing tensors {sorted(missing)}")
        n = cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 0))
        check_shapes(weights_path, w, {"encoder.weight": (n, d_in), "encoder.bias": (n,),
                                       "W_dec": (n, d_in), "b_dec": (d_in,),
                                       **({"W_skip": (d_in, d_in)} if skip else {})})
        b_enc = w["encoder.bias"]
        if skip and not transcode:  # ours: a transcoder reads x itself, so centre via b_enc
            b_enc = (b_enc.double() - w["encoder.weight"].double() @ w["b_dec"].double()).to(
                b_enc.dtype)
        weights = {"W_enc": w["encoder.weight"].T.contiguous(), "b_enc": b_enc,
                   "W_dec": w["W_dec"], "b_dec": w["b_dec"],
                   **({"W_skip": w["W_skip"]} if skip else {})}
        return SparseAutoencoder.from_weights("topk", weights, k=k, where=str(weights_path),
                                              device=device, transcoder=transcode or skip)
