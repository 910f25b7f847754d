"""Hardening, end to end through the real `python -m harness.sweep` CLI: bad input stops with
exit 2 and a message naming the file, key or value before anything is written; faults fail the
trial with a reason and leave the study readable."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from scripts_run import sweep_here
from spaces import load, one_trial, write_space

from harness.core.store import LocalStore
from harness.sweep.trial_record import TrialRecord

ROOT = Path(__file__).resolve().parents[2]


def sweep(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.sweep", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def odd_stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stores that validation must refuse: 20 tokens, all zeros, a meta.json lying about dtype,
    a shard cut short, an index (meta.json) cut short."""
    base = tmp_path_factory.mktemp("odd_stores")
    store = LocalStore(base)
    store.put_activations("tiny", "synthetic", torch.randn(20, 16))
    store.put_activations("zeros", "synthetic", torch.zeros(4000, 16))
    store.put_activations("lying", "synthetic", torch.randn(4000, 16))
    meta_path = store.activation_dir("lying") / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["dtype"] = "float16"
    meta_path.write_text(json.dumps(meta))
    store.put_activations("cut", "synthetic", torch.randn(4000, 16), shard_tokens=1000)
    shard = sorted(store.activation_dir("cut").glob("shard_*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:3000])  # a copy that stopped part-way
    store.put_activations("noindex", "synthetic", torch.randn(4000, 16))
    (store.activation_dir("noindex") / "meta.json").write_text('{"d": 16, "shards": [')
    return base


# (id, change to the space or None, extra CLI args, expected message)
PARAMS = {"expansion": 2, "k": 4, "lr": 3e-3}
BAD = [
    ("expansion not a number", {"params": {**PARAMS, "expansion": "abc"}}, (),
     "params.expansion: expected a number > 0, got 'abc'"),
    ("k choices strings", {"params": {**PARAMS, "k": {"type": "categorical",
                                                      "choices": ["4", "8"]}}}, (),
     "params.k: expected a whole number >= 1, got '4'"),
    ("lr a word", {"params": {**PARAMS, "lr": "fast"}}, (),
     "params.lr: expected a number > 0, got 'fast'"),
    ("k_fraction reaching n_latents", {"params": {"expansion": 1, "k_fraction": 0.999,
                                                  "lr": 3e-3}}, (),
     "params.k_fraction: 0.999 x n_latents rounds to 16 = n_latents"),
    ("run_id escaping the store", {"data": {"run_id": "../x"}}, (),
     "data.run_id: String should match pattern"),
    ("epochs a fraction", {"training": {"epochs": 2.5}}, (),
     "training.epochs: Input should be a valid integer (got 2.5)"),
    ("bool a string", {"training": {"progress": "yes"}}, (),
     "training.progress: Input should be a valid boolean (got 'yes')"),
    ("holdout above 1", {"training": {"holdout_fraction": 1.5}}, (),
     "training: SaeTrainingConfig.holdout_fraction must be in (0, 1), got 1.5"),
    ("unknown dtype", {"training": {"dtype": "float33"}}, (),
     "training: SaeTrainingConfig.dtype must be one of ['float32'"),
    ("unknown device in training", {"training": {"device": "tpu"}}, (),
     "SaeTrainingConfig.device must be cpu, cuda, cuda:N, mps, auto or None, got 'tpu'"),
    ("float sampled for an int field", {"params": {**PARAMS, "batch_size": {
        "type": "float", "low": 100, "high": 200}}, "training": {"epochs": 1}}, (),
     "params.batch_size: SaeTrainingConfig.batch_size is a whole number"),
    ("study name ..", None, ("--study", ".."), "study.name: String should match pattern"),
    ("layer ending like the stored one", {"data": {"layer_signature":
                                                   "model.layers.3.synthetic"}}, (),
     "data.layer_signature:"),
    ("unknown device", None, ("--devices", "banana"),
     "--devices: unknown device 'banana'; expected cpu, cuda or cuda:N"),
    ("empty device list", None, ("--devices", ","), "--devices ',': no device given"),
    ("missing GPU", None, ("--devices", "cpu,cuda:7"), "--devices: cuda:7 does not exist"),
    ("zero timeout", None, ("--timeout", "0"), "expected a positive number of seconds, got 0"),
    ("n-trials a word", None, ("--n-trials", "abc"), "expected a positive integer, got 'abc'"),
    ("sqlite in a missing folder", None, ("--storage", "sqlite:////nonexistent/dir/x.db"),
     "--storage sqlite:////nonexistent/dir/x.db: cannot open the storage"),
    ("postgresql without a driver", None,
     ("--storage", "postgresql://alice:s3cret@127.0.0.1:1/db"),
     "--storage postgresql://alice:***@127.0.0.1:1/db: cannot open the storage"),
    ("results where nothing can be written", None, ("--results", "/proc/saesweep/results"),
     "--results / results_dir: /proc/saesweep/results is not writable"),
    ("in-memory sqlite", None, ("--storage", "sqlite://"),
     "--storage sqlite://: an in-memory SQLite database lives in one process"),
    ("in-memory sqlite by name", None, ("--storage", "sqlite:///:memory:"),
     "an in-memory SQLite database lives in one process"),
    ("password in a query parameter", None,
     ("--storage", "postgresql://alice@127.0.0.1:1/db?password=s3cret"),
     "--storage postgresql://alice@127.0.0.1:1/db?password=***: cannot open the storage"),
    ("password with a raw @", None,
     ("--storage", "postgresql://alice:s3cret@x@127.0.0.1:1/db"),
     "--storage postgresql://alice:***@127.0.0.1:1/db: cannot open the storage"),
    ("a store of 20 tokens", {"data": {"run_id": "tiny"}}, (), "held-out token(s) of 20"),
    ("an all-zero store", {"data": {"run_id": "zeros"}}, (),
     "the held-out activations have zero variance"),
    ("meta.json dtype unlike its shards", {"data": {"run_id": "lying"}}, (),
     "shard holds float32 but"),
    ("a shard cut short", {"data": {"run_id": "cut"}}, (),
     "shard_00001.safetensors: unreadable or truncated safetensors file"),
    ("an index cut short", {"data": {"run_id": "noindex"}}, (),
     "noindex/meta.json: unreadable JSON"),
    ("an L0 penalty for TopK", {"training": {"epochs": 1, "l0_lambda": 1e-3}}, (),
     "training.l0_lambda: every trial gets it, but activation(s) ['topk'] have no L0 penalty "
     "(only jumprelu): remove it, or use activation jumprelu"),
    ("an L0 penalty for every activation of a mix", {
        "training": {"epochs": 1, "l0_lambda": 1e-3},
        "params": {**PARAMS, "activation": {"type": "categorical",
                                            "choices": ["topk", "jumprelu"]}}}, (),
     "activation(s) ['topk'] have no L0 penalty (only jumprelu): move it to params"),
    ("an L0 penalty sampled for TopK alone", {"params": {**PARAMS, "l0_lambda": {
        "type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}, (),
     "params.l0_lambda: no trial of this space would use it: the activation is topk, and "
     "l0_lambda belongs to jumprelu"),
    ("another activation's option", {"params": {**PARAMS, "matryoshka_prefixes": "0.25"}}, (),
     "params.matryoshka_prefixes: no trial of this space would use it"),
    ("a penalty given to an activation without it", {"params": {
        **PARAMS, "activation": {"type": "categorical", "choices": ["topk", "jumprelu"]},
        "l0_lambda": {"type": "float", "low": 1e-4, "high": 1e-2, "when": ["topk", "jumprelu"]}}},
     (), "params.l0_lambda.when: activation(s) ['topk'] do not use l0_lambda"),
]


@pytest.mark.parametrize(("case", "change", "args", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_naming_it_and_writes_nothing(synthetic_store, odd_stores, tmp_path,
                                                        capsys, case, change, args, message):
    results = tmp_path / "results"
    space = one_trial(synthetic_store, results)
    for key, value in (change or {}).items():
        if key == "data":
            odd = ("tiny", "zeros", "lying", "cut", "noindex")
            store = odd_stores if value.get("run_id") in odd else None
            space["data"] = {**space["data"], **value,
                             **({"store": str(store)} if store else {})}
        else:
            space[key] = value
    path = write_space(tmp_path / "bad.yaml", space)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = sweep_here(capsys, str(path), *args)
    code, out, err = proc.returncode, proc.stdout, proc.stderr
    assert code == 2, out + err
    assert message in err, err
    assert "s3cret" not in out + err and "s3cret@x" not in out + err
    assert not results.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_unwritable_results_folder_exits_2(synthetic_store, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    space = write_space(tmp_path / "s.yaml", one_trial(synthetic_store, tmp_path / "unused"))
    proc = sweep(str(space), "--results", str(blocker / "results"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--results / results_dir: {blocker / 'results'} cannot be created: {blocker} is " \
           "not a folder" in proc.stderr
    assert blocker.read_text() == "not a folder"


def test_unquoted_wandb_off_is_accepted_and_trials_record_their_device_and_host(
        synthetic_store, tmp_path, capsys):
    results = tmp_path / "results"
    text = yaml_text(one_trial(synthetic_store, results)).replace("mode: 'off'", "mode: off")
    assert "mode: off" in text
    path = tmp_path / "s.yaml"
    path.write_text(text)
    proc = sweep_here(capsys, str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (t,) = load(results).get_trials()
    record = TrialRecord.from_frozen(t)
    assert (record.state, record.device, record.host) == ("COMPLETE", "cpu",
                                                          socket.gethostname())
    assert json.loads((Path(record.trial_dir) / "trial.json").read_text())["device"] == "cpu"
    # its files also went to the default artifact store, by Optuna artifact id
    assert record.artifact_store == str((results / "t" / "artifacts").resolve())
    assert set(record.artifacts) >= {"sae_weights.safetensors", "history.json", "cfg.json"}
    stored = list((results / "t" / "artifacts").rglob("*"))
    assert sum(1 for f in stored if f.is_file()) == len(record.artifacts)


def yaml_text(space: dict) -> str:
    import yaml

    return yaml.safe_dump(space, sort_keys=False)


def test_an_artifact_store_that_cannot_be_written_is_refused_before_the_sweep(
        synthetic_store, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    path = write_space(tmp_path / "s.yaml", one_trial(synthetic_store, results))
    proc = sweep_here(capsys, str(path), "--artifacts", "/proc/saesweep/artifacts")
    code, out, err = proc.returncode, proc.stdout, proc.stderr
    assert code == 2 and "--artifacts / artifacts: /proc/saesweep/artifacts is not writable" \
        in err, out + err
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    proc = sweep_here(capsys, str(path), "--artifacts", "s3://saesweep-bucket/x")
    code, out, err = proc.returncode, proc.stdout, proc.stderr
    # with the s3 extra: the credentials are checked; without boto3: the extra is named
    expected = ("no AWS credentials" if importlib.util.find_spec("boto3") is not None
                else "an S3 artifact store needs boto3 (pip install 'saesweep[s3]')")
    assert code == 2 and f"s3://saesweep-bucket/x: {expected}" in err, out + err
    assert not results.exists()


def test_a_finished_study_says_so_instead_of_asking_for_a_rerun(synthetic_store, copy_finished,
                                                               tmp_path, capsys):
    path = write_space(tmp_path / "s.yaml", one_trial(synthetic_store, copy_finished))
    proc = sweep_here(capsys, str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already has 1 of its 1 trials: nothing to run (raise --n-trials" in proc.stdout
    assert "re-run" not in (proc.stdout + proc.stderr).lower()


def test_bad_training_data_stops_with_advice_to_fix_the_store(tmp_path, capsys):
    """NaNs in a shard holding training tokens only: validation (which reads the held-out
    split) passes, the worker meets them, fails the trial and stops the sweep."""
    from safetensors.torch import save_file

    from harness.core.loader import ActivationLoader, LoaderConfig

    store = LocalStore(tmp_path / "store")
    store.put_activations("nan", "synthetic", torch.randn(6000, 16), shard_tokens=60)
    source = store.open("nan", "synthetic")
    loader = ActivationLoader(source, LoaderConfig(batch_size=256))
    held = loader._held_blocks(torch.arange(len(source.shards)))  # one block per shard here
    assert loader.block == 60
    victim = source.shards[int(torch.nonzero(~held)[-1])]
    damaged = torch.randn(60, 16)
    damaged[3] = float("nan")
    save_file({victim.key: damaged}, str(victim.path))
    results = tmp_path / "results"
    space = one_trial(tmp_path / "store", results, data={
        "store": str(tmp_path / "store"), "run_id": "nan", "layer_signature": "synthetic"})
    proc = sweep_here(capsys, str(write_space(tmp_path / "s.yaml", space)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "the activation data is unusable" in proc.stderr and "fix the store" in proc.stderr
    assert "re-run the same command to continue" not in out
    (t,) = load(results).get_trials()
    assert t.state == TrialState.FAIL and "NaN or inf" in t.user_attrs["fail_reason"]
    assert str(victim.path) in t.user_attrs["fail_reason"]


def test_a_worker_without_its_device_stops_before_asking_for_a_trial(synthetic_store, tmp_path):
    """The global-cause rule: a device the worker cannot use ends it cleanly, no trial RUNNING."""
    from harness.sweep.space import load_space
    from harness.sweep.study import create_study
    from harness.sweep.worker import EXIT_NO_DEVICE

    results = tmp_path / "results"
    path = write_space(tmp_path / "s.yaml", one_trial(synthetic_store, results))
    loaded = load_space(path)
    journal = str(results / "t" / "study.journal")
    create_study(loaded, journal)
    device = "cuda:0" if not torch.cuda.is_available() else "cuda:99"
    proc = subprocess.run([sys.executable, "-m", "harness.sweep.worker", "--space", str(path),
                           "--storage", journal, "--index", "0", "--device", device],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_NO_DEVICE, proc.stdout + proc.stderr
    assert f"device {device}" in proc.stderr and "cannot be used" in proc.stderr
    assert load(results).get_trials() == []


def test_outputs_respect_the_umask(synthetic_store, tmp_path, capsys):
    results = tmp_path / "results"
    path = write_space(tmp_path / "s.yaml", one_trial(synthetic_store, results))
    before = os.umask(0o022)  # the sweep's umask, inherited by its worker
    try:
        proc = sweep_here(capsys, str(path))
    finally:
        os.umask(before)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = results / "t" / "trials" / "0000"
    for name in ("sae_weights.safetensors", "cfg.json", "trial.json", "history.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((results / "t" / "space.resolved.yaml").stat().st_mode) == 0o644


def test_changing_only_the_metric_is_refused(synthetic_store, copy_finished, tmp_path, capsys):
    """Item 1 of the hardening issue, once more from the CLI: the finished study maximised r2;
    another maximised metric keeps the direction and changes only the metric."""
    changed = one_trial(synthetic_store, copy_finished,
                        objectives=[{"metric": "dead_ratio", "direction": "maximize"}])
    journal = copy_finished / "t" / "study.journal"
    before = journal.read_bytes()
    proc = sweep_here(capsys, str(write_space(tmp_path / "b.yaml", changed)), "--n-trials", "2")
    assert proc.returncode == 2 and "--study NEW_NAME" in proc.stderr
    assert "objectives[0]:" in proc.stderr and "'dead_ratio'" in proc.stderr
    assert journal.read_bytes() == before


def test_a_binary_file_given_as_the_space_exits_2(tmp_path, capsys):
    space = tmp_path / "weights.safetensors"
    space.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}\x00\x00binary")
    proc = sweep_here(capsys, str(space))
    code, out, err = proc.returncode, proc.stdout, proc.stderr
    assert code == 2 and f"{space}: a binary file, not a YAML space" in err, out + err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]
