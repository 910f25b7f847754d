"""The sparse-probing datasets of sae-probes (Kantamneni et al. 2025), read offline from its wheel,
and their embeddings by a language model at one layer, computed once and cached.

`pip install --no-deps sae-probes==0.4.2 zstandard` brings the data without the package's heavy
dependencies: `sae_probes/data/probing_datasets_MASTER.csv.zst` lists the datasets, and each binary
one is `cleaned_data/<n>_<tag>.csv.zst` with columns `prompt` and `target`. As sae-probes does
(its generate_model_activations.py and utils_data.py): labels are the sorted classes encoded 0/1;
each prompt is embedded at its last token (truncated from the left, padded on the right; the model's
BOS in front, as the store's capture and TransformerLens put it); the split is sae-probes'
`get_train_test_indices` (seed 42, classes balanced), with at most TRAIN_EXAMPLES training and
TEST_EXAMPLES test examples per dataset here, to bound the cost.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.core.atomic import write_safetensors
from harness.data.models import LoadedModel
from harness.errors import SaesweepError
from harness.evaluate.hidden import hidden_at, task_folder

DEFAULT_DATASETS = ("5_hist_fig_ismale", "6_hist_fig_isamerican", "7_hist_fig_ispolitician",
                    "21_headline_istrump", "22_headline_isobama", "36_sciq_tf")
"""The default subset: short prompts (names, headlines, one-line statements), so embedding
them is cheap; `--datasets` chooses others."""
TRAIN_EXAMPLES = 512
"""Training examples per dataset at most (sae-probes' normal setting: 1,024)."""
TEST_EXAMPLES = 256
"""Test examples per dataset at most (sae-probes: the rest of the dataset)."""
MAX_PROMPT_TOKENS = 128
"""Prompt tokens kept, the last ones (sae-probes: 1,024)."""
SPLIT_SEED = 42
"""sae-probes' seed of the split."""


class ProbingDataError(SaesweepError):
    """sae-probes is not installed, or a dataset name is unknown."""


@dataclass(frozen=True)
class ProbingSet:
    """One dataset's embeddings at the layer, split as sae-probes splits it."""

    name: str
    x_train: torch.Tensor
    y_train: np.ndarray
    x_test: torch.Tensor
    y_test: np.ndarray


def data_folder() -> Path:
    """sae-probes' data folder; ProbingDataError when it is not installed."""
    spec = importlib.util.find_spec("sae_probes")
    if spec is None or not spec.submodule_search_locations:
        raise ProbingDataError("sparse probing reads sae-probes' datasets: pip install --no-deps "
                               "sae-probes==0.4.2 zstandard")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def binary_datasets(folder: Path | None = None) -> dict[str, Path]:
    """Every binary dataset, `<n>_<tag>` -> its file."""
    import pandas as pd

    folder = folder or data_folder()
    master = pd.read_csv(folder / "probing_datasets_MASTER.csv.zst", compression="zstd")
    names = master.loc[master["Data type"] == "Binary Classification", "Dataset save name"]
    out = {}
    for saved in names:
        path = folder / f"{saved}.zst"
        if path.exists():
            out[path.name.removesuffix(".csv.zst")] = path
    return out


def resolve_datasets(names: list[str] | None, folder: Path | None = None) -> dict[str, Path]:
    """The chosen datasets' files (default DEFAULT_DATASETS): sae-probes names, or CSV files
    (.csv or .csv.zst) with `prompt` and `target` columns; ProbingDataError naming any unknown
    name or missing file (sae-probes is only needed for names)."""
    names = list(names or DEFAULT_DATASETS)
    out: dict[str, Path] = {}
    files = [n for n in names if n.endswith((".csv", ".csv.zst"))]
    for n in files:
        if not Path(n).is_file():
            raise ProbingDataError(f"dataset file {n}: no such file (expected a CSV with prompt "
                                   "and target columns)")
        out[Path(n).name.removesuffix(".zst").removesuffix(".csv")] = Path(n)
    wanted = [n for n in names if n not in files]
    known = binary_datasets(folder) if wanted else {}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ProbingDataError(f"unknown sae-probes dataset(s) {unknown}; binary ones: "
                               f"{sorted(known)[:8]} ... ({len(known)} in all), or a .csv file")
    return {**out, **{n: known[n] for n in wanted}}


def read_dataset(path: Path) -> tuple[list[str], np.ndarray]:
    """(prompts, labels 0/1 by the sorted classes) of one dataset file."""
    import pandas as pd

    df = pd.read_csv(path, compression="zstd" if path.suffix == ".zst" else None)
    classes = sorted(df["target"].unique().tolist())
    if len(classes) != 2:
        raise ProbingDataError(f"{path}: {len(classes)} classes; sparse probing needs two")
    return [str(p) for p in df["prompt"]], (df["target"] == classes[1]).to_numpy(np.int64)


def split(y: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """sae-probes' get_train_test_indices with num_train = min(n - 100, TRAIN_EXAMPLES) and
    num_test = min(the rest, TEST_EXAMPLES): balanced classes, seeded."""
    rng = np.random.RandomState(seed)
    pos, neg = np.where(y == 1)[0], np.where(y == 0)[0]
    n_train = min(len(y) - 100, TRAIN_EXAMPLES)
    n_test = min(len(y) - n_train - 1, TEST_EXAMPLES)
    sizes = [(int(np.ceil(0.5 * n)), n - int(np.ceil(0.5 * n))) for n in (n_train, n_test)]
    n_pos, n_neg = sizes[0]
    if min(n_pos, n_neg) < 1 or n_pos + sizes[1][0] > len(pos) or n_neg + sizes[1][1] > len(neg):
        raise ProbingDataError(f"too few examples of a class for a balanced split "
                               f"({len(pos)} and {len(neg)})")
    train_pos = rng.choice(pos, size=n_pos, replace=False)
    train_neg = rng.choice(neg, size=n_neg, replace=False)
    rest_pos, rest_neg = np.setdiff1d(pos, train_pos), np.setdiff1d(neg, train_neg)
    test_pos = rng.choice(rest_pos, size=sizes[1][0], replace=False)
    test_neg = rng.choice(rest_neg, size=sizes[1][1], replace=False)
    return (rng.permutation(np.concatenate([train_pos, train_neg])),
            rng.permutation(np.concatenate([test_pos, test_neg])))


def embed(lm: LoadedModel, layer: str, prompts: list[str]) -> torch.Tensor:
    """[n, d] float32: the module's output at each prompt's last token."""
    front = [] if lm.bos_id is None else [lm.bos_id]
    ids = [front + lm.tokenizer(p, add_special_tokens=False)["input_ids"][-MAX_PROMPT_TOKENS:]
           for p in prompts]
    return hidden_at(lm, layer, ids, [len(i) - 1 for i in ids])


def probing_sets(lm: LoadedModel, layer: str, datasets: dict[str, Path],
                 cache: Path | None = None) -> tuple[list[ProbingSet], int]:
    """Each dataset's split embeddings, from `cache` (default: the saesweep cache) when it holds
    them for this model and layer, else computed and saved there; and how many were computed."""
    from safetensors.torch import load_file

    folder = task_folder("probing", lm, layer, cache)
    out, computed = [], 0
    for name, path in datasets.items():
        file = folder / f"{name}-{TRAIN_EXAMPLES}-{TEST_EXAMPLES}-{MAX_PROMPT_TOKENS}.safetensors"
        if file.exists():
            t = load_file(str(file))
        else:
            prompts, y = read_dataset(path)
            try:
                train, test = split(y)
            except ProbingDataError as e:
                raise ProbingDataError(f"{path}: {e}") from e
            idx = np.concatenate([train, test])
            x = embed(lm, layer, [prompts[i] for i in idx])
            t = {"x_train": x[:len(train)], "x_test": x[len(train):],
                 "y_train": torch.from_numpy(y[train]), "y_test": torch.from_numpy(y[test])}
            write_safetensors(file, t)
            computed += 1
        out.append(ProbingSet(name, t["x_train"], t["y_train"].numpy(), t["x_test"],
                              t["y_test"].numpy()))
    return out, computed
