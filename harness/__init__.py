"""saesweep: sweeps of sparse autoencoders over saved language-model activations.

    harness/core/      activation stores, the sparse autoencoder, the shared trainer, metrics
    harness/data/      capture from real models; synthetic data with planted features
    harness/evaluate/  SAE folders spliced into their language model (python -m harness.evaluate)
    harness/sweep/     search spaces, the Optuna study, workers, trials (python -m harness.sweep)
    harness/report/    trials as DataFrames, tables, plots, scaling fits (python -m harness.report)

The names below are imported when first used (module __getattr__), so `import harness` and every
command's `--help` start without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.lazy import lazy_exports

_EXPORTS = {
    # the seed API
    "SparseAutoencoder": "harness.core.sae",
    "TopKSae": "harness.core.sae",
    "SaeOutput": "harness.core.sae",
    "SaeTrainer": "harness.core.training",
    "SaeTrainingConfig": "harness.core.training",
    "TrainingHistory": "harness.core.training",
    "StopTraining": "harness.core.training",
    "TrainingDiverged": "harness.core.training",
    "SaveFailed": "harness.core.training",
    "LocalStore": "harness.core.store",
    "StoreError": "harness.core.store",
    "MemoryBudgetError": "harness.core.runtime.memory_plan",
    "SaesweepError": "harness.errors",
    # the metrics every report shares
    "METRICS": "harness.core.metrics",
    "Metric": "harness.core.metrics",
    "ReconstructionMetrics": "harness.core.metrics",
    "FeatureRecovery": "harness.core.metrics",
    "feature_recovery": "harness.core.metrics",
    # the registries (name -> class): activations, store layouts, study storages
    "ACTIVATIONS": "harness.core.activations",
    "LAYOUTS": "harness.core.store",
    "STORAGE_KINDS": "harness.sweep.storage",
}
_RENAMED = {"STORAGE_KINDS": "KINDS"}  # the registry's name inside its package

__all__ = [
    "ACTIVATIONS", "LAYOUTS", "METRICS", "STORAGE_KINDS", "FeatureRecovery", "LocalStore",
    "MemoryBudgetError", "Metric", "ReconstructionMetrics", "SaeOutput", "SaeTrainer",
    "SaesweepError",
    "SaeTrainingConfig", "SaveFailed", "SparseAutoencoder", "StopTraining", "StoreError",
    "TopKSae", "TrainingDiverged", "TrainingHistory", "feature_recovery",
]

if TYPE_CHECKING:
    from harness.core.activations import ACTIVATIONS
    from harness.core.metrics import (
        METRICS,
        FeatureRecovery,
        Metric,
        ReconstructionMetrics,
        feature_recovery,
    )
    from harness.core.runtime.memory_plan import MemoryBudgetError
    from harness.core.sae import SaeOutput, SparseAutoencoder, TopKSae
    from harness.core.store import LAYOUTS, LocalStore, StoreError
    from harness.core.training import (
        SaeTrainer,
        SaeTrainingConfig,
        SaveFailed,
        StopTraining,
        TrainingDiverged,
        TrainingHistory,
    )
    from harness.errors import SaesweepError
    from harness.sweep.storage import KINDS as STORAGE_KINDS


__getattr__ = lazy_exports(__name__, _EXPORTS, _RENAMED)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
