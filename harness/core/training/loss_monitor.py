"""The training loss, watched on the device: the divergence check and the mean loss between
evaluations, without the host waiting for the device at every step.

Reading a loss back (`float(loss)`) makes the host wait until the GPU has finished the step, so
the next step's kernels cannot be queued behind it. `record` only queues device operations; the
trainer calls `check` (one read) at its own cadence, at every evaluation and before the end of
training, so a divergence is reported, with the step where it began, at most that many steps
late. On CPU the trainer checks every step, where a read costs nothing.
"""

from __future__ import annotations

import math

import torch


class TrainingDiverged(RuntimeError):
    """The loss became non-finite (or exploded) at `step`."""

    def __init__(self, step: int, loss: float, reason: str) -> None:
        super().__init__(f"training diverged at step {step}: {reason} (loss={loss})")
        self.step = step
        self.loss = loss
        self.reason = reason


class LossMonitor:
    """Per-step losses of one run, kept on its device."""

    def __init__(self, divergence_factor: float, device: torch.device) -> None:
        self.factor = divergence_factor
        self.first: torch.Tensor | None = None
        """The first step's loss (the divergence threshold is relative to it)."""
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.n = 0
        """Steps summed into `total` since the last `take_mean`."""
        self._bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self._bad_value = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def record(self, loss: torch.Tensor, step: int) -> None:
        """Add one step's loss; flags (on the device) the first step that diverged."""
        value = loss.detach().double()
        bad = ~torch.isfinite(value)
        if self.first is None:
            self.first = value.clone()
        else:
            bad |= value > self.factor * self.first.clamp_min(1e-12)
        new = bad & (self._bad_step < 0)
        self._bad_step = torch.where(new, step, self._bad_step)
        self._bad_value = torch.where(new, value, self._bad_value)
        self.total += value
        self.n += 1

    def check(self) -> None:
        """Raise TrainingDiverged if any step recorded so far diverged (reads the device)."""
        step = int(self._bad_step)
        if step < 0:
            return
        value = float(self._bad_value)
        if not math.isfinite(value):
            raise TrainingDiverged(step, value, "non-finite loss")
        raise TrainingDiverged(step, value, f"loss exceeded {self.factor:g}x the first step's "
                                            f"loss ({float(self.first):.4g})")

    def take_mean(self) -> float:
        """The mean loss since the last call (0 if no step), and start a new sum."""
        mean = float(self.total) / max(self.n, 1)
        self.total.zero_()
        self.n = 0
        return mean

    STATE_KEYS = ("first_loss", "loss_sum", "loss_n")
    """The keys `state` writes (a checkpoint's)."""

    def state(self) -> dict[str, float | int | None]:
        """What a checkpoint keeps (after `check`, so nothing flagged is lost)."""
        return {"first_loss": None if self.first is None else float(self.first),
                "loss_sum": float(self.total), "loss_n": self.n}

    def load(self, state: dict) -> None:
        first = state["first_loss"]
        self.first = None if first is None else torch.tensor(
            first, dtype=torch.float64, device=self.total.device)
        self.total.fill_(float(state["loss_sum"]))
        self.n = int(state["loss_n"])
