"""saesweep: sweeps of top-k sparse autoencoders over saved language-model activations."""

from harness.loader import ActivationLoader, LoaderConfig
from harness.metrics import FeatureRecovery, ReconstructionMetrics, feature_recovery
from harness.sae import SaeOutput, TopKSae
from harness.store import ActivationSource, LocalStore, StoreError
from harness.train import (
    EvalResult,
    SaeTrainer,
    SaeTrainingConfig,
    StopTraining,
    TrainingDiverged,
    TrainingHistory,
)

__all__ = [
    "ActivationLoader", "ActivationSource", "EvalResult", "FeatureRecovery", "LoaderConfig",
    "LocalStore", "ReconstructionMetrics", "SaeOutput", "SaeTrainer", "SaeTrainingConfig",
    "StopTraining", "StoreError", "TopKSae", "TrainingDiverged", "TrainingHistory",
    "feature_recovery",
]
