"""Metric definitions, exactly as fixed in docs/metrics.md, and the one table of metrics.

- fvu  = sum_{t,j} (X - X_hat)^2 / sum_{t,j} (X - mu)^2 over the whole held-out set (sums are
         accumulated across batches and divided once, never averaged per batch);
- r2   = 1 - fvu;
- mse  = mean_{t,j} (X - X_hat)^2;
- l0   = mean over tokens of the number of latents with activation > 0;
- dead_features = latents that did not fire (activation > 0) in the last `window` training tokens;
  dead_ratio = dead_features / n_latents.

Sums are kept in float64 and the per-dimension variance is merged across batches with Chan's
parallel update, so a large activation mean does not eat the precision of sum (X - mu)^2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch


@dataclass(frozen=True)
class Metric:
    """What the harness knows about one metric: the single source for every part that shows,
    optimises, prunes on or reports it."""

    name: str
    """Its key everywhere: histories, objectives, W&B, the trial record (final_<name>)."""
    direction: Literal["maximize", "minimize"]
    """Which way is better."""
    label: str
    """Axis and prose label (a transcoder's eval metrics are of its target layer:
    docs/metrics.md, "Transcoders")."""
    header: str
    """Short column header (Markdown)."""
    tex: str
    """Column header in LaTeX."""
    fmt: str
    """Format spec of a value."""
    source: Literal["eval", "setup", "truth", "downstream", "sparse_probing", "absorption"]
    """Where a trial's value comes from: a held-out evaluation, the trial's resolved
    configuration, the planted ground truth of a synthetic store, the SAE spliced into its
    language model (harness.evaluate.downstream), or its latents on the language model's
    probing tasks (harness.evaluate.sparse_probing, harness.evaluate.absorption)."""
    objective: bool = True
    """May be a study objective."""

    @property
    def larger_is_better(self) -> bool:
        return self.direction == "maximize"

    def format(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return format(value, self.fmt)

    def better(self, a: float, b: float) -> bool:
        """a is strictly better than b."""
        return a > b if self.larger_is_better else a < b

    def best(self, values: Iterable[float]) -> float:
        return max(values) if self.larger_is_better else min(values)


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("r2", "maximize", "held-out R²", "R²", "$R^2$", ".4f", "eval"),
    Metric("fvu", "minimize", "held-out FVU", "FVU", "FVU", ".4g", "eval"),
    Metric("mse", "minimize", "held-out MSE", "MSE", "MSE", ".4g", "eval"),
    Metric("l0", "minimize", "held-out L0 (active latents per token)", "L0", "$L_0$", ".1f",
           "eval"),
    Metric("dead_ratio", "minimize", "dead latents (fraction)", "dead ratio", "Dead ratio",
           ".3f", "eval"),
    Metric("n_latents", "minimize", "latents", "latents", "Latents", "d", "setup"),
    Metric("k", "minimize", "k", "k", "$k$", "d", "setup"),
    Metric("ce_orig", "minimize", "clean LM cross-entropy (nats)", "CE clean",
           "CE$_\\mathrm{orig}$", ".4f", "downstream", objective=False),
    Metric("ce_sae", "minimize", "LM cross-entropy with the SAE spliced in (nats)", "CE SAE",
           "CE$_\\mathrm{SAE}$", ".4f", "downstream"),
    Metric("ce_zero", "minimize", "LM cross-entropy with the activation zeroed (nats)",
           "CE zero", "CE$_\\mathrm{zero}$", ".4f", "downstream", objective=False),
    Metric("delta_ce", "minimize", "ΔCE: LM loss added by the SAE (nats)", "ΔCE",
           "$\\Delta$CE", ".4f", "downstream"),
    Metric("ce_loss_score", "maximize", "CE-loss score (CE loss recovered)", "CE score",
           "CE score", ".4f", "downstream"),
    Metric("kl", "minimize", "KL(clean ‖ spliced) per token (nats)", "KL", "KL", ".4f",
           "downstream"),
    Metric("kl_score", "maximize", "KL score", "KL score", "KL score", ".4f", "downstream"),
    Metric("lm_fvu", "minimize", "FVU on the LM windows' spliced positions", "FVU (LM)",
           "FVU$_\\mathrm{LM}$", ".4g", "downstream"),
    Metric("lm_l0", "minimize", "L0 on the LM windows' spliced positions", "L0 (LM)",
           "$L_0^\\mathrm{LM}$", ".1f", "downstream"),
    *(Metric(f"sparse_probing_top{k}_{m}", "maximize",
             f"sparse probing: test {name} of a probe on the top {k} latents",
             f"probe {name} top-{k}", f"SP$_{{{k}}}$ {name}", ".3f", "sparse_probing")
      for k in (1, 2, 5, 16) for m, name in (("accuracy", "accuracy"), ("auc", "AUC"))),
    Metric("sparse_probing_baseline_accuracy", "maximize",
           "sparse probing: test accuracy of the probe on the raw activations",
           "probe accuracy raw", "SP$_\\mathrm{raw}$ accuracy", ".3f", "sparse_probing"),
    Metric("sparse_probing_baseline_auc", "maximize",
           "sparse probing: test AUC of the probe on the raw activations", "probe AUC raw",
           "SP$_\\mathrm{raw}$ AUC", ".3f", "sparse_probing", objective=False),
    Metric("absorption_rate", "minimize", "first-letter absorption (mean fraction)",
           "absorption", "Absorption", ".3f", "absorption"),
    Metric("full_absorption_rate", "minimize", "first-letter full absorption (share)",
           "full absorption", "Full abs.", ".3f", "absorption"),
    Metric("absorption_letters", "maximize", "letters the absorption is measured on",
           "letters", "Letters", "d", "absorption", objective=False),
    Metric("absorption_tokens", "maximize", "words the absorption is measured on", "words",
           "Words", "d", "absorption", objective=False),
    Metric("absorption_main_latents", "minimize", "main first-letter latents per letter",
           "main latents", "Main latents", ".2f", "absorption", objective=False),
    Metric("recovery", "maximize", "planted features recovered (cos >= 0.9)", "found",
           "Recovered", ".3f", "truth", objective=False),
    Metric("mmcs", "maximize", "mean max cosine to the planted features", "MMCS", "MMCS",
           ".3f", "truth"),
    Metric("firing_f1", "maximize", "F1 of latent firing against planted features' (matched)",
           "firing F1", "F1$_\\mathrm{fire}$", ".3f", "truth"),
)}
OBJECTIVE_METRICS = tuple(name for name, m in METRICS.items() if m.objective)
EVAL_METRICS = tuple(name for name, m in METRICS.items() if m.source == "eval")


def metric(name: str) -> Metric:
    """The table entry of `name`; a KeyError lists the known ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {list(METRICS)}") from None


@dataclass(frozen=True)
class ReconstructionMetrics:
    """Reconstruction quality over one evaluation set."""

    fvu: float
    """Fraction of variance unexplained."""
    r2: float
    """1 - fvu ("explained variance")."""
    mse: float
    """Mean squared error per element."""
    l0: float
    """Mean number of active latents per token."""
    n_tokens: int
    """Tokens the figures were computed on."""


class ReconstructionAccumulator:
    """Accumulates FVU / MSE / L0 over batches; `result()` divides once at the end."""

    def __init__(self) -> None:
        self.n = 0
        self._mean: torch.Tensor | None = None  # per-dimension running mean, float64
        self._m2: torch.Tensor | None = None  # per-dimension sum of squared deviations
        self._sse = 0.0
        self._active = 0.0

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, n_active: torch.Tensor | float) -> None:
        """Add a batch: inputs `x` [B, d], reconstruction `x_hat` [B, d], and the total count of
        active latents over the batch's tokens (a scalar)."""
        x64 = x.detach().to(torch.float64)
        b = x64.shape[0]
        if b == 0:
            return
        self._sse += float((x64 - x_hat.detach().to(torch.float64)).pow(2).sum())
        self._active += float(n_active)
        batch_mean = x64.mean(0)
        batch_m2 = (x64 - batch_mean).pow(2).sum(0)
        if self._mean is None or self._m2 is None:
            self._mean, self._m2 = batch_mean, batch_m2
        else:
            total = self.n + b
            delta = batch_mean - self._mean
            self._mean = self._mean + delta * (b / total)
            self._m2 = self._m2 + batch_m2 + delta.pow(2) * (self.n * b / total)
        self.n += b

    def result(self) -> ReconstructionMetrics:
        if self.n == 0 or self._m2 is None:
            raise ValueError("no tokens were accumulated: the evaluation set is empty")
        total_var = float(self._m2.sum())
        d = self._m2.numel()
        fvu = self._sse / total_var if total_var > 0 else float("inf")
        return ReconstructionMetrics(
            fvu=fvu, r2=1.0 - fvu, mse=self._sse / (self.n * d), l0=self._active / self.n,
            n_tokens=self.n,
        )


class DeadFeatureTracker:
    """Counts latents that did not fire in the last `window` training tokens.

    A latent is dead at token count T when its last firing was at or before T - window. Every
    latent counts as having fired at token 0, so nothing is dead before `window` tokens are seen.
    `update` runs on the device without reading anything back; `read` is the one host sync, for
    the trainer to call at its own cadence.
    """

    def __init__(self, n_latents: int, window: int, device: torch.device | str = "cpu") -> None:
        if window <= 0:
            raise ValueError(f"dead-feature window must be a positive token count, got {window}")
        self.window = int(window)
        self.n_latents = int(n_latents)
        self.tokens = 0
        # one extra slot that latents chosen with a zero value are written to: no boolean
        # indexing, whose data-dependent size would make the host wait for the device
        self._last = torch.zeros(n_latents + 1, dtype=torch.long, device=device)

    @property
    def last_fired(self) -> torch.Tensor:
        """Token count at each latent's last firing [n_latents]."""
        return self._last[:self.n_latents]

    @last_fired.setter
    def last_fired(self, value: torch.Tensor) -> None:
        self._last[:self.n_latents] = value.to(self._last)

    @torch.no_grad()
    def update(self, top_indices: torch.Tensor, top_values: torch.Tensor) -> None:
        """Record a training batch: top-k indices and (post-ReLU) values, both [B, k]."""
        self.tokens += top_indices.shape[0]
        fired = torch.where(top_values > 0, top_indices, self.n_latents)
        self._last.index_fill_(0, fired.flatten(), self.tokens)

    def dead_mask(self) -> torch.Tensor:
        return (self.tokens - self.last_fired) >= self.window

    def read(self) -> DeadLatents:
        """The dead latents now (reads them back to the host)."""
        return DeadLatents.of(self.dead_mask())

    def count(self) -> int:
        return int(self.dead_mask().sum())


class DeadLatents(NamedTuple):
    """Which latents are dead, as the host last read them (what AuxK trains)."""

    mask: torch.Tensor
    """[n_latents] bool, on the device."""
    indices: torch.Tensor
    """The dead latents' indices [count], on the device."""
    count: int
    """How many are dead."""

    @classmethod
    def of(cls, mask: torch.Tensor) -> DeadLatents:
        indices = torch.nonzero(mask).flatten()
        return cls(mask, indices, int(indices.numel()))


@dataclass(frozen=True)
class FeatureRecovery:
    """How well learned decoder rows match known ground-truth directions."""

    mmcs: float
    """Mean over true directions of the best cosine with any decoder row."""
    recovery: float
    """Fraction of true directions whose best cosine is >= threshold."""
    threshold: float
    """The cosine threshold c of recovery@c."""


@torch.no_grad()
def firing_f1(planted: torch.Tensor, fired: torch.Tensor) -> float:
    """Mean over planted features of the F1 of one latent's firing against the feature's, each
    feature matched to a distinct latent so that the sum of F1s is largest (Hungarian matching,
    scipy's linear_sum_assignment): planted [N, m] and fired [N, n] bool over the same tokens."""
    from scipy.optimize import linear_sum_assignment

    p, f = planted.float(), fired.float()  # counts below 2^24 are exact in float32
    both = p.T @ f  # [m, n] tokens where feature i and latent j fire together
    f1 = (2 * both / (p.sum(0)[:, None] + f.sum(0)[None, :]).clamp_min(1)).double().numpy()
    rows, cols = linear_sum_assignment(f1, maximize=True)
    return float(f1[rows, cols].sum() / planted.shape[1])


@torch.no_grad()
def feature_recovery(
    true_directions: torch.Tensor, decoder: torch.Tensor, threshold: float = 0.9
) -> FeatureRecovery:
    """recovery@c and MMCS of true unit directions D [m, d] against decoder rows W [n, d]."""
    d_true = torch.nn.functional.normalize(true_directions.float(), dim=1)
    w = torch.nn.functional.normalize(decoder.float(), dim=1)
    best = (d_true @ w.T).max(dim=1).values
    return FeatureRecovery(
        mmcs=float(best.mean()), recovery=float((best >= threshold).float().mean()),
        threshold=threshold,
    )
