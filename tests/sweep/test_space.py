from pathlib import Path

import optuna
import pytest
import torch
from spaces import tiny_space, write_space

from harness.core.recipes import default_lr
from harness.core.store import open_store
from harness.core.store.statistics import participation_ratio
from harness.sweep.space import SpaceError, load_space


@pytest.fixture()
def space_dict(synthetic_store: Path, tmp_path: Path) -> dict:
    return tiny_space(synthetic_store, tmp_path / "results")


def _load(tmp_path: Path, space: dict):
    return load_space(write_space(tmp_path / "space.yaml", space))


def test_valid_space_loads_with_data_width(space_dict, tmp_path):
    loaded = _load(tmp_path, space_dict)
    assert loaded.d == 16 and loaded.space.budget.n_trials == 4
    assert not (tmp_path / "results").exists()  # loading writes nothing


def _mutate(space: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = space
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return space


_DELETE = object()

BAD = [
    # (key path to change, new value, what the message must contain)
    ("study.nmae", "x", r"study.nmae: Extra inputs are not permitted"),
    ("budget.n_trials", "many", r"budget.n_trials: Input should be a valid integer"),
    ("params.lr", {"type": "float", "low": 1e-2, "high": 1e-3},
     r"params.lr: Value error, low \(0.01\) must be <= high \(0.001\)"),
    ("params.lr", {"type": "float", "low": 0.0, "high": 1e-3, "log": True},
     r"params.lr: Value error, log scale needs low > 0, got low=0.0"),
    ("params.lr", {"type": "float", "low": 1e-4}, r"params.lr: .*needs both 'low' and 'high'"),
    ("params.learning_rate", {"type": "float", "low": 1e-4, "high": 1e-3},
     r"params: Value error, unknown parameter 'learning_rate'"),
    ("data.store", "/nonexistent/store", r"data.run_id: .*no activation run 'syn'"),
    ("data.layer_signature", "blocks.9", r"data.layer_signature: .*layers present"),
    ("params.k", {"type": "int", "low": 2, "high": 40},
     r"params.k: k can reach 40 but n_latents can be as small as 32"),
    ("params.k", _DELETE, r"params: Value error, 'k' or 'k_fraction' must be"),
    ("training.epoch", 3, r"training.epoch: unknown SaeTrainingConfig field"),
    ("training.batch_size", 0, r"training: SaeTrainingConfig.batch_size must be > 0"),
    ("training.lr", 1e-3, r"training.lr: also given under params; give it once"),
    ("sampler.options", {"multivarate": True},
     r"sampler.options.multivarate: not an option of RandomSampler"),
    ("sampler.type", "annealing", r"sampler.type: Input should be 'tpe', 'random'"),
    ("pruner", {"type": "median", "dead_features": {"max_ratio": 2}},
     r"pruner.dead_features.max_ratio: Input should be less than or equal to 1"),
    ("objectives", [{"metric": "accuracy", "direction": "maximize"}],
     r"objectives.0.metric: Value error, unknown objective metric .accuracy.; expected one of"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_space_names_file_key_and_expectation(space_dict, tmp_path, key, value, message):
    path = write_space(tmp_path / "bad.yaml", _mutate(space_dict, key, value))
    with pytest.raises(SpaceError, match=message) as info:
        load_space(path)
    assert str(path) in str(info.value)


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("study: [unclosed")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(bad)
    with pytest.raises(SpaceError, match="cannot read"):
        load_space(tmp_path / "missing.yaml")


def test_overrides_are_validated_like_the_file(space_dict, tmp_path):
    path = write_space(tmp_path / "s.yaml", space_dict)
    assert load_space(path, overrides={"budget": {"n_trials": 9}}).space.budget.n_trials == 9
    with pytest.raises(SpaceError, match="budget.n_trials: Input should be greater than 0"):
        load_space(path, overrides={"budget": {"n_trials": 0}})


def _sample(loaded):
    study = optuna.create_study(directions=loaded.space.directions,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    return loaded.setup(study.ask())


def test_setup_resolves_k_fraction_and_lr_scale_of_the_default_lr(space_dict, tmp_path):
    space_dict["params"] = {"expansion": 4, "k_fraction": 0.125,
                            "lr_scale": {"type": "float", "low": 2.0, "high": 2.0},
                            "auxk_alpha": {"type": "categorical", "choices": [0.0]}}
    setup = _sample(_load(tmp_path, space_dict))
    assert setup.n_latents == 64 and setup.k == 8
    # the synthetic store: 6000 tokens, 5% held out, batches of 256, 2 epochs = 2 x 23 steps;
    # the store's participation ratio, as the trainer measures it
    spread = participation_ratio(open_store(space_dict["data"]["store"]).open("syn", "synthetic"))
    assert setup.lr == pytest.approx(2.0 * default_lr(64, 16, 46, 256, spread))
    assert setup.config.auxk_alpha == 0.0 and setup.config.epochs == 2  # sampled + fixed


def test_each_activation_samples_only_its_own_parameters(space_dict, tmp_path):
    space_dict["params"] = {
        "expansion": 4,
        "activation": {"type": "categorical", "choices": ["topk", "relu", "jumprelu",
                                                          "matryoshka_batchtopk"]},
        "k": {"type": "categorical", "choices": [2, 4]},
        "l1_lambda": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True,
                      "when": ["relu"]},
        "l0_lambda": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "matryoshka_prefixes": {"type": "categorical", "choices": ["0.25", "0.125,0.5"]},
        "lr_scale": 1.0}
    loaded = _load(tmp_path, space_dict)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(24):
        trial = study.ask()
        setup = loaded.setup(trial)
        seen[setup.activation] = set(trial.params)
        assert (setup.k is None) == (setup.activation in ("relu", "jumprelu"))
        assert setup.config.l0_lambda > 0 if setup.activation == "jumprelu" else (
            setup.config.l0_lambda == 0)
        study.tell(trial, 0.0)
    assert seen == {"topk": {"activation", "k"}, "relu": {"activation", "l1_lambda"},
                    "jumprelu": {"activation", "l0_lambda"},
                    "matryoshka_batchtopk": {"activation", "k", "matryoshka_prefixes"}}


def test_k_fraction_outside_unit_interval_is_rejected(space_dict, tmp_path):
    del space_dict["params"]["k"]
    space_dict["params"]["k_fraction"] = 1.5
    with pytest.raises(SpaceError,
                       match=r"params.k_fraction: expected a number in \(0, 1\), got 1.5"):
        _load(tmp_path, space_dict)


def test_shipped_spaces_validate(tmp_path):
    root = Path(__file__).resolve().parents[2] / "search_spaces"
    files = sorted(root.glob("*.yaml"))
    assert any(f.name == "quickstart.yaml" for f in files)
    for f in files:
        load_space(f, check_data=False)  # schema only: their data lives elsewhere


def test_lockstep_cannot_sample_data_fields(space_dict, tmp_path):
    space_dict["lockstep"] = 2
    del space_dict["training"]["batch_size"]
    space_dict["params"]["batch_size"] = {"type": "categorical", "choices": [128, 256]}
    with pytest.raises(SpaceError, match=r"params.batch_size: lockstep trials share one data"):
        _load(tmp_path, space_dict)
    space_dict["lockstep"] = 1
    _load(tmp_path, space_dict)


def test_scientific_notation_is_a_number_in_every_field(space_dict, tmp_path):
    """YAML 1.1 reads an unquoted 1e-3 as a string; a space reads it as the number everywhere."""
    import yaml

    text = yaml.safe_dump(space_dict, sort_keys=False)
    text = text.replace("training:\n", "training:\n  lr_decay_fraction: 1e-1\n", 1)
    text = text.replace("low: 0.001", "low: 1e-3").replace("high: 0.01", "high: 1e-2")
    assert "low: 1e-3" in text and "high: 1e-2" in text
    (tmp_path / "s.yaml").write_text(text)
    loaded = load_space(tmp_path / "s.yaml")
    assert loaded.space.training["lr_decay_fraction"] == 0.1
    lr = loaded.space.params["lr"]
    assert (lr.low, lr.high) == (1e-3, 1e-2)
    fixed = text.replace("  lr:\n    type: float\n    low: 1e-3\n    high: 1e-2\n    log: true\n",
                         "  lr: 3e-3\n")
    assert "lr: 3e-3" in fixed
    (tmp_path / "f.yaml").write_text(fixed)
    assert load_space(tmp_path / "f.yaml").space.params["lr"] == 3e-3


def test_a_key_given_twice_is_refused_naming_both_lines(space_dict, tmp_path):
    import yaml

    text = yaml.safe_dump(space_dict, sort_keys=False) + "study:\n  name: other\n"
    (tmp_path / "s.yaml").write_text(text)
    first = text.splitlines().index("study:") + 1
    last = len(text.splitlines()) - 1
    with pytest.raises(SpaceError, match=rf"key 'study' is given twice in one mapping, on lines "
                                         rf"{first} and {last}"):
        load_space(tmp_path / "s.yaml")


@pytest.mark.parametrize(("data", "message"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a binary file, not a YAML space"),
    ("study: caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
])
def test_a_binary_or_non_utf8_space_is_refused(tmp_path, data, message):
    (tmp_path / "s.yaml").write_bytes(data)
    with pytest.raises(SpaceError, match=message):
        load_space(tmp_path / "s.yaml")


@pytest.mark.parametrize(("entry", "line"), [
    ({"type": "float", "low": "abc", "high": 1}, "params.lr.low: Input should be a valid number"),
    ({"type": "flot", "low": 1, "high": 2}, "params.lr.type: Input should be 'float', 'int' or"),
    ([1, 2], "params.lr: expected a number, a string, true or false, or a mapping"),
])
def test_a_bad_params_entry_is_one_line_without_pydantic_noise(space_dict, tmp_path, entry, line):
    space_dict["params"]["lr"] = entry
    with pytest.raises(SpaceError) as info:
        _load(tmp_path, space_dict)
    lines = str(info.value).splitlines()
    assert len(lines) == 1 and line in lines[0], lines


def test_transcoder_data_is_checked_before_anything_runs(space_dict, tmp_path):
    """A target layer the run lacks, a target not aligned with the input, and a skip path
    without a target are each refused naming the key; a good pair gives both widths."""
    import shutil

    from harness.core.store import LocalStore

    copy = shutil.copytree(space_dict["data"]["store"], tmp_path / "store")  # not the shared one
    space_dict["data"]["store"] = str(copy)
    store = LocalStore(copy)
    source = store.open("syn", "synthetic")
    for i in range(len(source.shards)):  # a second layer of the same rows: a target
        store.put_activations("syn", "synthetic.out", source.read_shard(i)[:, :12])
    space_dict["data"]["target_layer_signature"] = "synthetic.out"
    loaded = _load(tmp_path, space_dict)
    assert (loaded.d, loaded.d_out) == (16, 12)
    space_dict["data"]["target_layer_signature"] = "nope"
    with pytest.raises(SpaceError, match=r"data.target_layer_signature: .*layer 'nope' not in "
                                         r"run 'syn'"):
        _load(tmp_path, space_dict)
    del space_dict["data"]["target_layer_signature"]
    space_dict["params"]["skip"] = True
    with pytest.raises(SpaceError, match=r"params.skip: a skip path needs a transcoder"):
        _load(tmp_path, space_dict)
    assert not (tmp_path / "results").exists()


def test_an_objective_against_planted_features_needs_a_store_that_has_them(space_dict, tmp_path):
    from harness.core.store import LocalStore

    space_dict["objectives"] = [{"metric": "firing_f1", "direction": "maximize"}]
    assert _load(tmp_path, space_dict)  # the synthetic store: its process is recorded
    LocalStore(tmp_path / "plain").put_activations("syn", "synthetic", torch.randn(3000, 16))
    space_dict["data"]["store"] = str(tmp_path / "plain")
    with pytest.raises(SpaceError, match=r"objectives: \['firing_f1'\] are measured against "
                                         "planted features"):
        _load(tmp_path, space_dict)


def test_probing_and_absorption_take_downstreams_model_and_layer(space_dict, tmp_path):
    downstream = {"model": "smollm2", "layer": "model.layers.6"}
    space_dict["evaluation"] = {"downstream": downstream, "sparse_probing": {},
                                "absorption": {"layer": "model.layers.3", "words": 500}}
    ev = _load(tmp_path, space_dict).space.evaluation
    assert (ev.sparse_probing.model, ev.sparse_probing.layer) == ("smollm2", "model.layers.6")
    assert (ev.absorption.model, ev.absorption.layer) == ("smollm2", "model.layers.3")
    assert ev.sparse_probing.datasets is None and ev.absorption.min_letters == 20
    space_dict["evaluation"] = {"absorption": {"layer": "model.layers.3"}}
    with pytest.raises(SpaceError, match=r"absorption.model: give it, or an "
                                         r"evaluation.downstream section"):
        _load(tmp_path, space_dict)
    space_dict["evaluation"] = {"absorption": {**downstream, "words": 10}}
    with pytest.raises(SpaceError, match=r"evaluation.absorption.words: Input should be greater "
                                         r"than or equal to 50"):
        _load(tmp_path, space_dict)
