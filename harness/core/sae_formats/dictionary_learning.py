"""dictionary_learning's folders: ae.pt (a state dict) and the trainer's config.json.

ae.pt is read with `torch.load(weights_only=True)`: a file that would need unpickling is refused.
The class comes from config.json's `trainer.dict_class` (else from the state dict's keys, where
they tell it apart). Read, with its forward pass as dictionary_learning runs it at inference:

| dict_class | read as |
|---|---|
| AutoEncoder | ReLU: relu(encoder(x - bias)), decoder(f) + bias |
| AutoEncoderTopK | TopK: the top k of relu(encoder(x - b_dec)) |
| BatchTopKSAE | BatchTopK: relu(encoder(x - b_dec)) above its threshold |
| MatryoshkaBatchTopKSAE | Matryoshka BatchTopK (at inference a BatchTopK); group sizes: prefixes |
| JumpReluAutoEncoder | JumpReLU; b_dec subtracted from the input only where config.json says so |

Any other class (gated, AutoEncoderNew, ...) is refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from harness.core.readback import CorruptFile, check_shapes, read_json
from harness.core.sae_formats.errors import UnsupportedSae
from harness.core.sae_formats.weights import Weights, fold_input_bias

if TYPE_CHECKING:
    from harness.core.sae import SparseAutoencoder

WEIGHTS_FILE = "ae.pt"
CONFIG_FILE = "config.json"
CLASSES = ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE",
           "JumpReluAutoEncoder")


class DictionaryLearningFormat:
    """ae.pt (+ config.json)."""

    name: ClassVar[str] = "dictionary_learning"
    files: ClassVar[str] = "ae.pt (+ config.json)"

    @staticmethod
    def claims(folder: Path) -> bool:
        return (folder / WEIGHTS_FILE).is_file()

    @staticmethod
    def read(folder: Path, device: torch.device | str = "cpu") -> SparseAutoencoder:
        from harness.core.sae import SparseAutoencoder

        path = folder / WEIGHTS_FILE
        state = _state_dict(path)
        trainer = {}
        if (folder / CONFIG_FILE).is_file():
            trainer = read_json(folder / CONFIG_FILE).get("trainer") or {}
        dict_class = trainer.get("dict_class") or _guess(state, path)
        if dict_class not in CLASSES:
            raise UnsupportedSae(f"{folder / CONFIG_FILE}: trainer.dict_class {dict_class!r} is "
                                 f"not read (read: {', '.join(CLASSES)})")
        where = str(path)
        if dict_class == "JumpReluAutoEncoder":
            weights = _take(state, path, {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec",
                                          "b_dec": "b_dec"})
            if not trainer.get("apply_b_dec_to_input", False):  # its class's default
                weights = fold_input_bias(weights)
            threshold = _take(state, path, {"threshold": "threshold"})["threshold"]
            return SparseAutoencoder.from_weights("jumprelu", {**weights,
                                                               "threshold": threshold.clamp_min(0)},
                                        where=where, device=device)
        if dict_class == "MatryoshkaBatchTopKSAE":
            weights = _take(state, path, {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec",
                                          "b_dec": "b_dec"})
        elif dict_class == "AutoEncoder":
            weights = _linear(state, path, bias="bias")
        else:
            weights = _linear(state, path, bias="b_dec")
        if dict_class == "AutoEncoder":
            return SparseAutoencoder.from_weights("relu", weights, where=where, device=device)
        k = int(_take(state, path, {"k": "k"})["k"])
        if dict_class == "AutoEncoderTopK":
            return SparseAutoencoder.from_weights("topk", weights, k=k, where=where, device=device)
        threshold = _take(state, path, {"threshold": "threshold"})["threshold"]
        options: dict[str, Any] = {}
        name = "batchtopk"
        if dict_class == "MatryoshkaBatchTopKSAE":
            sizes = _take(state, path, {"group_sizes": "group_sizes"})["group_sizes"].tolist()
            ends = [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)]
            n = weights["W_dec"].shape[0]
            if ends:
                name, options = "matryoshka_batchtopk", {
                    "matryoshka_prefixes": ",".join(str(e / n) for e in ends)}
        return SparseAutoencoder.from_weights(name, {**weights, "threshold": threshold}, k=k,
                                              options=options, where=where, device=device)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise UnsupportedSae(f"{path}: not a plain state dict of tensors (torch.load with "
                             f"weights_only=True refused it: {str(e).splitlines()[0]}); this "
                             "harness never unpickles code") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise UnsupportedSae(f"{path}: not a state dict of tensors")
    return state


def _guess(state: dict[str, torch.Tensor], path: Path) -> str:
    keys = set(state)
    if {"encoder.weight", "decoder.weight", "bias"} <= keys:
        return "AutoEncoder"
    if "group_sizes" in keys:
        return "MatryoshkaBatchTopKSAE"
    if {"W_enc", "threshold"} <= keys and state["threshold"].dim() == 1:
        return "JumpReluAutoEncoder"
    raise UnsupportedSae(f"{path}: no config.json beside it says its trainer.dict_class, and its "
                         f"keys {sorted(keys)} do not tell (AutoEncoderTopK and BatchTopKSAE "
                         "hold the same ones)")


def _take(state: dict[str, torch.Tensor], path: Path, names: dict[str, str]) -> Weights:
    missing = sorted(set(names.values()) - state.keys())
    if missing:
        raise CorruptFile(f"{path}: missing tensors {missing}")
    return {ours: state[theirs] for ours, theirs in names.items()}


def _linear(state: dict[str, torch.Tensor], path: Path, bias: str) -> Weights:
    """Weights of the classes built from nn.Linear (encoder.weight is [dict, act])."""
    w = _take(state, path, {"enc": "encoder.weight", "b_enc": "encoder.bias",
                            "dec": "decoder.weight", "b_dec": bias})
    n, d = w["enc"].shape
    check_shapes(path, w, {"enc": (n, d), "b_enc": (n,), "dec": (d, n), "b_dec": (d,)})
    return {"W_enc": w["enc"].T.contiguous(), "b_enc": w["b_enc"],
            "W_dec": w["dec"].T.contiguous(), "b_dec": w["b_dec"]}
