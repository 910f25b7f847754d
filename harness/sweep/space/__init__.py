"""Declarative search spaces: one YAML file describes one sweep, validated before anything runs.

    schema.py  the file's sections as strict pydantic models
    load.py    load_space: validation, data and training checks, each trial's setup
"""

from harness.sweep.space.load import (
    LoadedSpace,
    TrialSetup,
    bounding_values,
    load_space,
    synthetic_spec,
)
from harness.sweep.space.schema import (
    MIN_EVAL_TOKENS,
    PRUNERS,
    SAMPLERS,
    SPECIAL_PARAMS,
    DataSection,
    DeadFeatureSection,
    DownstreamSection,
    EvaluationSection,
    FaultsSection,
    Objective,
    ParamSpec,
    PrunerSection,
    R2FloorSection,
    SpaceError,
    StudySection,
    SweepSpace,
    SyntheticSection,
)

__all__ = ["MIN_EVAL_TOKENS", "PRUNERS", "SAMPLERS", "SPECIAL_PARAMS", "DataSection",
           "DeadFeatureSection", "DownstreamSection", "EvaluationSection", "FaultsSection",
           "LoadedSpace", "Objective", "ParamSpec", "PrunerSection", "R2FloorSection",
           "SpaceError", "StudySection", "SweepSpace", "SyntheticSection", "TrialSetup",
           "bounding_values", "load_space", "synthetic_spec"]
