"""Ours and SAELens' folders: cfg.json + sae_weights.safetensors.

Read: SAELens 6.x inference SAEs (`standard`, `topk`, `jumprelu`), its training checkpoints
(`batchtopk` and `matryoshka_batchtopk` with `topk_threshold`, and the others), configs from
before 6.0 (by SAELens' own rule: `activation_fn` topk with a k is `topk`, else `standard`), and
ours (`saesweep_activation`, or an older folder's `activation_fn` beside `k_aux`).

Each cfg.json field that changes the forward pass is honoured or refused:

| field | read as |
|---|---|
| architecture | the five above and SAELens' four transcoders (TRANSCODERS); others refused |
| d_out (transcoders) | W_dec [d_sae, d_out], b_dec [d_out], W_skip [d_out, d_in] |
| k | TopK's and BatchTopK's k |
| apply_b_dec_to_input: false | honoured: b_dec is folded into b_enc |
| rescale_acts_by_decoder_norm: true | honoured: the row norms are folded into the weights |
| normalize_activations | `none` only; the other four refused (the message says why) |
| reshape_activations | `none` only (`hook_z` refused) |
| finetuning_scaling_factor (before 6.0) | honoured: folded into W_dec |
| dtype | honoured: the weights are cast to it, as SAELens does |
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from harness.core.readback import CorruptFile, check_shapes, read_json, read_safetensors
from harness.core.sae_formats.errors import UnsupportedSae
from harness.core.sae_formats.weights import (
    Weights,
    decoder_norms,
    fold_input_bias,
    scale_latents,
)

if TYPE_CHECKING:
    from harness.core.sae import SparseAutoencoder

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
NORMALIZE_WHY = {
    "expected_average_only_in": "its inputs were scaled by a dataset constant the folder does not "
    "hold; fold it into the weights first (SAELens: fold_activation_norm_scaling_factor) and set "
    "normalize_activations to none",
    "constant_norm_rescale": "each input is rescaled to norm sqrt(d_in) and the output back, a "
    "forward pass this harness does not run",
    "layer_norm": "each input is layer-normalised and the output de-normalised, a forward pass "
    "this harness does not run",
    "covariance_whitening": "its inputs were whitened with statistics the folder does not hold; "
    "fold them into the weights first (SAELens: fold_activation_whitening)",
}
ARCHITECTURES = ("topk", "standard", "jumprelu", "batchtopk", "matryoshka_batchtopk")
TRANSCODERS = {"transcoder": ("standard", False), "skip_transcoder": ("standard", True),
               "jumprelu_transcoder": ("jumprelu", False),
               "jumprelu_skip_transcoder": ("jumprelu", True)}
"""SAELens 6.x's transcoder architectures: (the SAE architecture they encode with, skip path)."""


class SaeLensFormat:
    """cfg.json (+ sae_weights.safetensors): ours and SAELens'."""

    name: ClassVar[str] = "saelens"
    files: ClassVar[str] = "cfg.json + sae_weights.safetensors"

    @staticmethod
    def claims(folder: Path) -> bool:
        return (folder / CONFIG_FILE).is_file()

    @staticmethod
    def read(folder: Path, device: torch.device | str = "cpu") -> SparseAutoencoder:
        from harness.core.sae import SparseAutoencoder

        cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        cfg = read_json(cfg_path)
        ours = cfg.get("saesweep_activation") or (cfg.get("activation_fn")
                                                  if "k_aux" in cfg else None)
        architecture = cfg.get("architecture")
        if ours is None and _major(cfg) < 6:
            architecture = _legacy_architecture(cfg, cfg_path)
        transcoder = "d_out" in cfg or architecture in TRANSCODERS
        skip = bool(cfg.get("saesweep_skip", TRANSCODERS.get(architecture, ("", False))[1]))
        if ours is None and architecture in TRANSCODERS:
            architecture = TRANSCODERS[architecture][0]
        for key in ("d_in", "d_sae", *(("d_out",) if transcoder else ())):
            value = cfg.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CorruptFile(f"{cfg_path}: {key} must be a whole number >= 1, got "
                                  f"{value!r}")
        _check_forward_fields(cfg, cfg_path)
        _check_architecture(architecture, ours, cfg_path, skip if transcoder else None)
        weights = read_safetensors(weights_path)
        d_in, d_sae = cfg["d_in"], cfg["d_sae"]
        d_out = cfg["d_out"] if transcoder else d_in
        check_shapes(weights_path, weights, {
            "W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out),
            "b_dec": (d_out,), **({"W_skip": (d_out, d_in)} if skip else {})})
        dtype = getattr(torch, str(cfg.get("dtype", "")).removeprefix("torch."), None)
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            weights = {key: value.to(dtype) for key, value in weights.items()}
        core = {key: weights[key] for key in ("W_enc", "b_enc", "W_dec", "b_dec",
                                              *(("W_skip",) if skip else ()))}
        if cfg.get("apply_b_dec_to_input", True) is False and not transcoder:
            core = fold_input_bias(core)
        if cfg.get("finetuning_scaling_factor"):
            if "finetuning_scaling_factor" not in weights:
                raise CorruptFile(f"{cfg_path}: finetuning_scaling_factor is true, but "
                                  f"{weights_path} has no such tensor")
            scale = weights["finetuning_scaling_factor"].to(torch.float64)
            core["W_dec"] = (core["W_dec"].to(torch.float64) * scale[:, None]).to(
                core["W_dec"].dtype)
        if cfg.get("rescale_acts_by_decoder_norm"):
            core = scale_latents(core, decoder_norms(core))
        activation, k, options, own = _activation(architecture, ours, cfg, weights, cfg_path)
        return SparseAutoencoder.from_weights(activation, {**core, **own}, k=k, options=options,
                                              k_aux=cfg.get("k_aux"), where=str(weights_path),
                                              device=device, transcoder=transcoder)


def _major(cfg: dict[str, Any]) -> int:
    """SAELens' major version the config was written in (0 when it does not say)."""
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def _legacy_architecture(cfg: dict[str, Any], where: Path) -> str:
    """SAELens' rule for a config from before 6.0."""
    fn = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if fn == "topk" and k is not None:
        return "topk"
    if fn not in ("relu", None):
        raise UnsupportedSae(f"{where}: activation_fn {fn!r}: only relu and topk (with "
                             "activation_fn_kwargs.k) are read from a config before SAELens 6")
    hook = str(cfg.get("hook_name", cfg.get("hook_point", "")))
    if hook.endswith("hook_z") and "reshape_activations" not in cfg:
        cfg["reshape_activations"] = "hook_z"
    normalize = cfg.get("normalize_activations")
    if isinstance(normalize, bool):
        cfg["normalize_activations"] = "expected_average_only_in" if normalize else "none"
    return str(cfg.get("architecture", "standard"))


def _check_forward_fields(cfg: dict[str, Any], where: Path) -> None:
    normalize = cfg.get("normalize_activations") or "none"
    if normalize != "none":
        why = NORMALIZE_WHY.get(normalize, "an unknown normalisation")
        raise UnsupportedSae(f"{where}: normalize_activations {normalize!r}: {why}")
    reshape = cfg.get("reshape_activations") or "none"
    if reshape != "none":
        raise UnsupportedSae(f"{where}: reshape_activations {reshape!r}: the SAE reads an "
                             "attention layer's heads reshaped; this harness splices whole "
                             "module outputs")


def _check_architecture(architecture: Any, ours: Any, where: Path,
                        skip: bool | None = None) -> None:
    """A read architecture; ours (any registered activation, when given) saved as it (a
    transcoder's, `skip` not None, under its transcoder name)."""
    from harness.core.activations import ACTIVATIONS
    from harness.core.sae import transcoder_architecture

    if ours is not None:
        if ours not in ACTIVATIONS:
            raise UnsupportedSae(f"{where}: saesweep_activation {ours!r} is not one of "
                                 f"{list(ACTIVATIONS)}")
        saved_as = ACTIVATIONS[ours].saelens_name or ours
        if skip is not None:
            saved_as = transcoder_architecture(saved_as, skip)
        if architecture not in (ours, saved_as):
            raise UnsupportedSae(f"{where}: saesweep_activation {ours!r} is saved as "
                                 f"architecture {saved_as!r}, not {architecture!r}: the two "
                                 "disagree")
    elif architecture not in ARCHITECTURES:
        raise UnsupportedSae(f"{where}: architecture {architecture!r} is not read (read: "
                             f"{', '.join(ARCHITECTURES)}): its forward pass is not one this "
                             "harness runs")


def _activation(architecture: Any, ours: Any, cfg: dict[str, Any], weights: Weights,
                where: Path) -> tuple[str, int | None, dict[str, Any], Weights]:
    """(our activation, k, its options, its own tensors) for the folder's architecture."""
    from harness.core.activations import ACTIVATIONS

    if ours is not None:  # ours: the activation names its own tensors (from_weights picks)
        return _ours(ours, cfg, weights, where)
    name = {"standard": "relu"}.get(architecture, architecture)
    options = {key: cfg[key] for key in ACTIVATIONS[name].options if key in cfg}
    k = None
    if ACTIVATIONS[name].uses_k:
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if not isinstance(k, int) or isinstance(k, bool):
            raise CorruptFile(f"{where}: architecture {architecture!r} needs a whole number k, "
                              f"got {k!r}")
    if name == "matryoshka_batchtopk" and "matryoshka_prefixes" not in options:
        widths = [w for w in cfg.get("matryoshka_widths") or [] if 0 < w < cfg["d_sae"]]
        if not widths:  # one prefix, the whole dictionary: at inference a plain BatchTopK
            name, options = "batchtopk", {}
        else:
            options["matryoshka_prefixes"] = ",".join(str(w / cfg["d_sae"]) for w in widths)
    if name in ("relu", "topk"):
        return name, k, options, {}
    threshold = _threshold(architecture, weights, where)
    if name == "jumprelu":  # relu first: a negative threshold keeps what 0 keeps
        threshold = threshold.clamp_min(0)
    return name, k, options, {"threshold": threshold}


def _ours(name: str, cfg: dict[str, Any], weights: Weights, where: Path
          ) -> tuple[str, int | None, dict[str, Any], Weights]:
    from harness.core.activations import ACTIVATIONS

    cls = ACTIVATIONS[name]
    options = {key: cfg[key] for key in cls.options if key in cfg}
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k")) if cls.uses_k else None
    if cls.uses_k and (not isinstance(k, int) or isinstance(k, bool)):
        raise CorruptFile(f"{where}: activation {name!r} needs a whole number k, got {k!r}")
    own = {key: value for key, value in weights.items()
           if key not in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip")}
    return name, k, options, own


def _threshold(architecture: str, weights: Weights, where: Path) -> torch.Tensor:
    for key in ("threshold", "topk_threshold"):
        if key in weights:
            return weights[key]
    if "log_threshold" in weights:
        return weights["log_threshold"].exp()
    raise CorruptFile(f"{where}: architecture {architecture!r} needs a threshold tensor "
                      "(threshold, topk_threshold or log_threshold); there is none")
