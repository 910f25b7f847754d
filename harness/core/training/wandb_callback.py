"""Weights & Biases as an evaluation callback: one W&B run per training run, fed every
evaluation, the final metrics and how the run ended (harness.core.wandb_log does the W&B calls
and turns any W&B failure into one warning)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from harness.core.training.config import SaeTrainingConfig
from harness.core.training.loss_monitor import TrainingDiverged
from harness.core.training.results import EvalResult, TrainingHistory
from harness.core.wandb_log import WandbRun


class WandbCallback:
    """Logs each EvalResult at its step; `final` adds the final metrics; `close` writes the
    summary (status finished / diverged / failed) and ends the W&B run."""

    def __init__(self, cfg: SaeTrainingConfig, run_id: str, out_dir: Path,
                 config: dict[str, Any]) -> None:
        self.run: WandbRun | None = WandbRun(
            project=cfg.wandb_project, name=cfg.wandb_run_name or run_id, config=config,
            mode=cfg.wandb_mode, dir=cfg.wandb_dir or out_dir, group=cfg.wandb_group,
            job_type=cfg.wandb_job_type)

    def __call__(self, result: EvalResult) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in dataclasses.asdict(result).items() if k != "step"},
                         step=result.step)

    def final(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None and metrics:
            self.run.log(dict(metrics), step=step)

    def close(self, history: TrainingHistory, error: BaseException | None) -> None:
        if self.run is None:
            return
        if error is not None:
            self.run.set_summary({"status": "diverged" if isinstance(error, TrainingDiverged)
                                  else "failed", "error": str(error)})
            self.run.finish(exit_code=1)
        else:
            final = history.final
            self.run.set_summary({**(dataclasses.asdict(final) if final else {}),
                                  **history.final_metrics, "stop_reason": history.stop_reason,
                                  "status": "finished"})
            self.run.finish()
        self.run = None
