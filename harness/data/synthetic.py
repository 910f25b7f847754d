"""Synthetic activations with known ground truth, for tests and the demo.

Each token is a sparse non-negative combination of a fixed set of random unit directions, plus a
constant offset and Gaussian noise. A good SAE should reconstruct it (high R²) and its decoder rows
should line up with the true directions (see `harness.core.metrics.feature_recovery`).

With `d_out`, each token also has a target, for transcoders: the same sparse code through other
unit directions (a planted sparse map y = D codes(x) + noise), plus, with `target_linear`, a fixed
random linear map of x (what a skip-transcoder's linear path learns). The target is drawn from a
stream of its own, so the inputs are those of the same spec without it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from harness.core.atomic import write_safetensors
from harness.core.seeding import stream_seed
from harness.core.store import open_store

GROUND_TRUTH_FILE = "ground_truth.safetensors"


@dataclass(frozen=True)
class SyntheticSpec:
    """The generating process."""

    d: int = 64
    """Activation dimension."""
    n_features: int = 256
    """Number of true unit directions."""
    mean_active: float = 5.0
    """Expected number of active features per token."""
    n_tokens: int = 100_000
    """Tokens to generate."""
    magnitude: str = "uniform"
    """Law of an active feature's magnitude: "uniform" on [magnitude_low, magnitude_high], or
    "exponential" (magnitude_low + Exp(1) * (magnitude_high - magnitude_low))."""
    magnitude_low: float = 0.5
    """Smallest magnitude of an active feature."""
    magnitude_high: float = 1.5
    """Upper end (uniform) or magnitude_low + mean excess (exponential)."""
    frequency_decay: float = 0.0
    """Feature i fires with probability proportional to (i+1)^-decay (0 = all equally often)."""
    offset_norm: float = 0.0
    """Norm of a constant offset added to every token (a non-zero activation mean)."""
    noise_std: float = 0.01
    """Std of isotropic Gaussian noise per dimension."""
    seed: int = 0
    """Seed of directions, offset and tokens."""
    d_out: int = 0
    """Width of a transcoder's target (0 = none)."""
    target_linear: float = 0.0
    """Gain of the random linear map of the input added to the target (its rows unit norm)."""


class SyntheticData:
    """Ground truth plus a token stream drawn from it."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        gen = torch.Generator().manual_seed(stream_seed(spec.seed, "synthetic"))
        self.directions = F.normalize(torch.randn(spec.n_features, spec.d, generator=gen), dim=1)
        self.offset = F.normalize(torch.randn(spec.d, generator=gen), dim=0) * spec.offset_norm
        weights = (torch.arange(spec.n_features, dtype=torch.float64) + 1) ** -spec.frequency_decay
        probs = weights / weights.sum() * spec.mean_active
        if spec.magnitude not in ("uniform", "exponential"):
            raise ValueError(f"magnitude must be uniform or exponential, got {spec.magnitude!r}")
        if float(probs.max()) > 1.0:
            raise ValueError("mean_active / frequency_decay give a feature probability above 1")
        self.probabilities = probs.float()
        self._gen = gen
        target_gen = torch.Generator().manual_seed(stream_seed(spec.seed, "synthetic.target"))
        self.target_directions: torch.Tensor | None = None
        """With d_out: the planted target directions [n_features, d_out]."""
        self.target_map: torch.Tensor | None = None
        """With d_out: the linear map of the input added to the target [d_out, d]."""
        if spec.d_out:
            self.target_directions = F.normalize(
                torch.randn(spec.n_features, spec.d_out, generator=target_gen), dim=1)
            self.target_map = spec.target_linear * F.normalize(
                torch.randn(spec.d_out, spec.d, generator=target_gen), dim=1)
        self._target_gen = target_gen
        self.targets: list[torch.Tensor] = []
        """With d_out: each chunk's targets, as `chunks` yields its inputs."""

    def chunks(self, chunk_tokens: int = 65536):
        """Yield [<= chunk_tokens, d] float32 tensors until n_tokens are produced."""
        s, done = self.spec, 0
        while done < s.n_tokens:
            n = min(chunk_tokens, s.n_tokens - done)
            x, _, y = self._draw(n, self._gen, self._target_gen)
            if y is not None:
                self.targets.append(y)
            done += n
            yield x

    def sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor,
                                                     torch.Tensor | None]:
        """`n` fresh tokens of the same process, never in the store (streams of their own):
        (inputs [n, d], which planted features are active [n, n_features], targets or None)."""
        gen = torch.Generator().manual_seed(stream_seed(self.spec.seed, "synthetic.sample", seed))
        target_gen = torch.Generator().manual_seed(
            stream_seed(self.spec.seed, "synthetic.sample.target", seed))
        return self._draw(n, gen, target_gen)

    def _draw(self, n: int, gen: torch.Generator, target_gen: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        s = self.spec
        active = torch.rand(n, s.n_features, generator=gen) < self.probabilities
        mags = torch.empty(n, s.n_features)
        if s.magnitude == "exponential":
            mags.exponential_(1.0, generator=gen)
            mags = s.magnitude_low + mags * (s.magnitude_high - s.magnitude_low)
        else:
            mags.uniform_(s.magnitude_low, s.magnitude_high, generator=gen)
        x = (active * mags) @ self.directions + self.offset
        x += s.noise_std * torch.randn(n, s.d, generator=gen)
        y = None
        if self.target_directions is not None and self.target_map is not None:
            y = (active * mags) @ self.target_directions + x @ self.target_map.T
            y = y + s.noise_std * torch.randn(n, s.d_out, generator=target_gen)
        return x, active & (mags > 0), y


TARGET_SUFFIX = ".target"
"""A synthetic run's target layer is its input layer's name with this after it."""


def write_synthetic_store(
    base: str | Path, run_id: str, spec: SyntheticSpec, layer_signature: str = "synthetic",
    shard_tokens: int = 65536,
) -> torch.Tensor:
    """Generate `spec` into a LocalStore run (with `d_out`, its targets too, as the layer
    `layer_signature + TARGET_SUFFIX`, shard for shard); returns the true directions (also saved
    in the run folder as ground_truth.safetensors)."""
    store = open_store(base)
    data = SyntheticData(spec)
    meta = {"model_id": "synthetic", "synthetic_spec": asdict(spec)}
    for x in data.chunks(shard_tokens):
        store.put_activations(run_id, layer_signature, x, meta=meta, shard_tokens=shard_tokens)
        if spec.d_out:
            store.put_activations(run_id, layer_signature + TARGET_SUFFIX, data.targets.pop(),
                                  shard_tokens=shard_tokens)
    write_safetensors(store.activation_dir(run_id) / GROUND_TRUTH_FILE,
                      {"directions": data.directions, "offset": data.offset,
                       **({"target_directions": data.target_directions}
                          if data.target_directions is not None else {})})
    return data.directions


def load_ground_truth(base: str | Path, run_id: str, target: bool = False) -> torch.Tensor:
    """The true directions of a synthetic run (`target`: of its targets, what a transcoder's
    decoder should find)."""
    path = open_store(base).activation_dir(run_id) / GROUND_TRUTH_FILE
    return load_file(str(path))["target_directions" if target else "directions"]


def load_synthetic(base: str | Path, run_id: str) -> SyntheticData | None:
    """The process a synthetic run was generated by (from its meta.json), or None."""
    meta_path = open_store(base).activation_dir(run_id) / "meta.json"
    try:
        spec = json.loads(meta_path.read_text(encoding="utf-8")).get("synthetic_spec")
    except (OSError, ValueError):
        return None
    return SyntheticData(SyntheticSpec(**spec)) if isinstance(spec, dict) else None


def has_ground_truth(base: str | Path, run_id: str) -> bool:
    """Whether the run was generated here and so carries its true directions."""
    return (open_store(base).activation_dir(run_id) / GROUND_TRUTH_FILE).exists()
