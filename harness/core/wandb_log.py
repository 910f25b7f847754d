"""A thin, failure-proof wrapper around a W&B run.

Offline mode is chosen when no API key is configured (this machine has no network): the run is
written under `dir`/wandb/ and can be uploaded later with `wandb sync`. Any W&B error is turned
into one warning and the run is dropped: logging never kills training.
"""

from __future__ import annotations

import netrc
import os
import warnings
from pathlib import Path
from typing import Any


def resolve_mode(mode: str | None) -> str:
    """"online" / "offline" / "disabled"; None picks online only when a key is configured."""
    if mode:
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"wandb mode must be online, offline or disabled, got {mode!r}")
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if has_api_key() else "offline"


def has_api_key() -> bool:
    """Whether W&B credentials are configured (WANDB_API_KEY or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbRun:
    """One W&B run; every method is a no-op once W&B has failed."""

    def __init__(
        self,
        project: str,
        name: str | None,
        config: dict[str, Any],
        mode: str | None = None,
        dir: str | Path | None = None,
        group: str | None = None,
        job_type: str | None = None,
    ) -> None:
        self.run: Any = None
        self.mode = resolve_mode(mode)
        if self.mode == "disabled":
            return
        try:
            import wandb

            if dir is not None:
                Path(dir).mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=project, name=name, config=config, mode=self.mode,
                dir=str(dir) if dir is not None else None, group=group, job_type=job_type,
                reinit="create_new", settings=wandb.Settings(
                    silent=True, console="off", x_save_requirements=False, disable_git=True,
                    x_disable_stats=True, disable_code=True),
            )
        except Exception as e:  # noqa: BLE001 - W&B must never stop training
            self._fail("init", e)

    @property
    def run_dir(self) -> Path | None:
        """The run's local folder (what `wandb sync` uploads), if the run exists."""
        return Path(self.run.dir).parent if self.run is not None else None

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.run is not None:
            try:
                self.run.log(row, step=step)
            except Exception as e:  # noqa: BLE001
                self._fail("log", e)

    def set_summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            try:
                for key, value in values.items():
                    self.run.summary[key] = value
            except Exception as e:  # noqa: BLE001
                self._fail("summary", e)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            try:
                self.run.finish(exit_code=exit_code)
            except Exception as e:  # noqa: BLE001
                self._fail("finish", e)
            self.run = None

    def _fail(self, what: str, error: Exception) -> None:
        warnings.warn(f"W&B {what} failed, continuing without W&B: {error}", stacklevel=3)
        self.run = None
