"""Declarative search spaces: one YAML file describes one sweep, validated before anything runs.

    schema.py  the file's sections as strict pydantic models
    load.py    load_space and each trial's setup (conditional parameters included)
    checks.py  the checks after the schema: values, training, options, data, k
    evaluation.py  the evaluation section: downstream, sparse probing, absorption
"""

from harness.sweep.space.evaluation import (
    AbsorptionSection,
    DownstreamSection,
    EvaluationSection,
    SparseProbingSection,
)
from harness.sweep.space.load import (
    LoadedSpace,
    TrialSetup,
    bounding_values,
    load_space,
    synthetic_spec,
)
from harness.sweep.space.schema import (
    PRUNERS,
    SAMPLERS,
    SPECIAL_PARAMS,
    DataSection,
    DeadFeatureSection,
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

__all__ = ["PRUNERS", "SAMPLERS", "SPECIAL_PARAMS", "AbsorptionSection", "DataSection",
           "DeadFeatureSection", "DownstreamSection", "EvaluationSection", "FaultsSection",
           "LoadedSpace", "Objective", "ParamSpec", "PrunerSection", "R2FloorSection",
           "SpaceError", "SparseProbingSection", "StudySection", "SweepSpace",
           "SyntheticSection", "TrialSetup", "bounding_values", "load_space", "synthetic_spec"]
