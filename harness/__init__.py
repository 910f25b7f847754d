"""saesweep: sweeps of top-k sparse autoencoders over saved language-model activations.

    harness/core/    activation stores and batches, TopKSae, the shared trainer, metrics
    harness/data/    capture from real models; synthetic data with planted features
    harness/sweep/   search spaces, the Optuna study, workers, trials (python -m harness.sweep)
    harness/report/  trials as DataFrames, tables, plots, scaling fits (python -m harness.report)
"""

from harness.core.loader import ActivationLoader, LoaderConfig
from harness.core.metrics import (
    METRICS,
    FeatureRecovery,
    Metric,
    ReconstructionMetrics,
    feature_recovery,
)
from harness.core.sae import SaeOutput, TopKSae
from harness.core.store import ActivationSource, LocalStore, StoreError
from harness.core.training import (
    EvalResult,
    SaeTrainer,
    SaeTrainingConfig,
    SaveFailed,
    StopTraining,
    TrainingDiverged,
    TrainingHistory,
)

__all__ = [
    "METRICS", "ActivationLoader", "ActivationSource", "EvalResult", "FeatureRecovery",
    "LoaderConfig", "LocalStore", "Metric", "ReconstructionMetrics", "SaeOutput", "SaeTrainer",
    "SaeTrainingConfig", "SaveFailed", "StopTraining", "StoreError", "TopKSae",
    "TrainingDiverged", "TrainingHistory", "feature_recovery",
]
