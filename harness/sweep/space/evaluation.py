"""The `evaluation:` section of a space: what every finished trial's SAE is scored on beyond
its held-out split, each part needing the language model at the store's layer."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.evaluate.config import ABSORPTION_WORDS, MIN_LETTERS, DownstreamConfig


class Strict(BaseModel):
    """A section: unknown keys and loose types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class DownstreamSection(Strict):
    """Splice every finished trial's SAE into its language model (harness.evaluate)."""

    model: str = Field(min_length=1)
    """A named causal LM (smollm2), a local folder or a hub id: the store's model."""
    layer: str = Field(min_length=1)
    """The hook point, as captured (e.g. model.layers.6)."""
    text: str = DownstreamConfig.text
    """A corpus name, a folder of .txt files or a file of blank-line separated documents: text
    the SAEs were not trained on."""
    windows: int = Field(DownstreamConfig.windows, gt=0)
    """Evaluation windows (the first N of the text)."""
    seq_len: int = Field(DownstreamConfig.seq_len, ge=2)
    """Text tokens per window (the BOS comes in front)."""
    batch_windows: int = Field(DownstreamConfig.batch_windows, gt=0)
    """Windows per forward pass."""
    every: int | None = Field(None, gt=0)
    """Also evaluate during training, at the first evaluation at or past every this many steps
    (so a pruner can use it); None = only the finished SAE."""

    def config(self, device: str = "cpu") -> DownstreamConfig:
        return DownstreamConfig(device=device, **self.model_dump(exclude={"every"}))


class LatentTaskSection(Strict):
    """A task on the SAE's latents that embeds its examples with the language model."""

    model: str | None = Field(None, min_length=1)
    """The causal LM; None = evaluation.downstream's model."""
    layer: str | None = Field(None, min_length=1)
    """The hook point, as captured; None = evaluation.downstream's layer."""


class SparseProbingSection(LatentTaskSection):
    """Sparse probing of every finished trial's SAE (harness.evaluate.sparse_probing)."""

    datasets: list[str] | None = Field(None, min_length=1)
    """sae-probes dataset names, or CSV files with `prompt` and `target` columns; None = the
    documented default subset."""


class AbsorptionSection(LatentTaskSection):
    """First-letter feature absorption of every finished trial's SAE
    (harness.evaluate.absorption)."""

    words: int = Field(ABSORPTION_WORDS, ge=50)
    """Single-token words drawn from the vocabulary (80% train the probes, 20% measure)."""
    min_letters: int = Field(MIN_LETTERS, ge=1, le=26)
    """Letters whose first-letter probe must reach F1 > 0.6 for absorption to be measured."""


class EvaluationSection(Strict):
    """Evaluations of each finished trial beyond the held-out split."""

    downstream: DownstreamSection | None = None
    sparse_probing: SparseProbingSection | None = None
    absorption: AbsorptionSection | None = None

    @model_validator(mode="after")
    def _model_and_layer(self) -> EvaluationSection:
        for name in ("sparse_probing", "absorption"):
            section = getattr(self, name)
            if section is None:
                continue
            for key in ("model", "layer"):
                if getattr(section, key) is None:
                    if self.downstream is None:
                        raise ValueError(f"{name}.{key}: give it, or an evaluation.downstream "
                                         f"section whose {key} it takes")
                    setattr(section, key, getattr(self.downstream, key))
        return self
