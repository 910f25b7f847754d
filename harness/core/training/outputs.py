"""What a finished run leaves in its folder: the SAE (safetensors + cfg.json),
training_config.json, history.json and meta.json."""

from __future__ import annotations

import dataclasses
import platform
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors
import torch

from harness.core.atomic import write_json
from harness.core.sae import SparseAutoencoder
from harness.core.store import ActivationSource, LocalStore, PairedSource, flatten_layer_name
from harness.core.training.config import SaeTrainingConfig
from harness.core.training.results import TrainingHistory
from harness.version import saesweep_version


def new_run_id(run_id: str, layer: str) -> str:
    """A fresh training run id: activation run, layer, UTC time and a random suffix."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"sae_{run_id}_{flatten_layer_name(layer)}_{stamp}_{uuid.uuid4().hex[:6]}"


def target_layer(source: ActivationSource) -> str | None:
    """The layer a transcoder trained on `source` reconstructs; None for an SAE."""
    return source.target_layer_signature if isinstance(source, PairedSource) else None


def save_run(out_dir: Path, sae: SparseAutoencoder, cfg: SaeTrainingConfig,
             history: TrainingHistory, source: ActivationSource, store: LocalStore,
             training_run_id: str, extra_meta: dict[str, Any]) -> None:
    """Write the SAE and its records into `out_dir` (each file atomically)."""
    final = history.final
    target = target_layer(source)
    sae.save(out_dir, metadata={"activation_run": source.run_id,
                                "layer_signature": source.layer_signature,
                                **({"hook_name_out": target, "target_layer_signature": target}
                                   if target else {}),
                                "model_id": source.model_id})
    write_json(out_dir / "training_config.json", cfg.to_dict())
    write_json(out_dir / "history.json", history.to_dict())
    write_json(out_dir / "meta.json", {
        "training_run_id": training_run_id,
        "activation_run": source.run_id,
        "layer_signature": source.layer_signature,
        "target_layer_signature": target,
        "kind": sae.kind,
        "store": str(store.base_path),
        "store_layout": source.layout,
        "model_id": source.model_id,
        "seed": cfg.seed,
        "final": dataclasses.asdict(final) if final else None,
        "best_r2": max(history.r2) if history.r2 else None,
        "stop_reason": history.stop_reason,
        "dead_window_tokens": history.dead_window_tokens,
        "n_train_tokens": history.n_train_tokens,
        "n_eval_tokens": history.n_eval_tokens,
        "wall_time_s": history.wall_time_s,
        "finish_s": history.finish_s,
        "finish_share": history.finish_share,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__,
                     "python": platform.python_version(), "saesweep": saesweep_version()},
        **extra_meta,
    })
