import json
from pathlib import Path

import pytest
import torch
from mi_crow_layout import flat, write_padded_run, write_run_meta
from safetensors.torch import save_file

from harness import SaeTrainer, SaeTrainingConfig, TopKSae
from harness.core.store import (
    LAYOUTS,
    ActivationSource,
    LocalStore,
    ShardRef,
    StoreError,
    open_store,
)
from harness.core.store.source import header_dtype, header_shape


def test_put_activations_appends_shards_and_keeps_meta_correct(tmp_path: Path):
    store = LocalStore(tmp_path)
    a = torch.randn(2, 5, 8)  # [batch, seq, d] is flattened
    meta = store.put_activations("r", "blocks.3", a, meta={"model_id": "m", "corpus": "c"})
    assert meta["n_tokens"] == 10 and meta["d"] == 8 and meta["dtype"] == "float32"
    store.put_activations("r", "blocks.3", [torch.randn(7, 8), torch.randn(3, 8)], shard_tokens=4)
    on_disk = json.loads((tmp_path / "activations" / "r" / "meta.json").read_text())
    assert on_disk["n_tokens"] == 20
    assert [s["n_tokens"] for s in on_disk["shards"]] == [10, 4, 3, 3]
    assert on_disk["model_id"] == "m" and on_disk["layer_signature"] == "blocks.3"
    assert not list((tmp_path / "activations" / "r").glob("*.tmp"))  # atomic writes left nothing
    src = store.open("r", "blocks.3")
    got = torch.cat([src.read_shard(i) for i in range(len(src.shards))])
    assert src.n_tokens == 20 and src.layout == "saesweep"
    assert torch.equal(got[:10], a.reshape(10, 8))


def test_put_activations_rejects_inconsistent_appends(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_activations("r", "L", torch.randn(4, 8))
    with pytest.raises(StoreError, match="d=8"):
        store.put_activations("r", "L", torch.randn(4, 6))
    store.put_activations("r", "other", torch.randn(4, 6))  # a second layer of the same run
    assert store.open("r", "other").d == 6 and store.open("r", "L").d == 8
    with pytest.raises(StoreError, match="d=6"):
        store.put_activations("r", "other", torch.randn(4, 8))
    with pytest.raises(StoreError, match=r"layers present: \['L', 'other'\]"):
        store.open("r", "third")
    with pytest.raises(StoreError, match="dtype"):
        store.put_activations("r", "L", torch.randn(4, 8).half())
    with pytest.raises(StoreError, match="NaN"):
        store.put_activations("r", "L", torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match="set by the store"):
        store.put_activations("r", "L", torch.randn(4, 8), meta={"d": 3})
    assert store.open("r", "L").n_tokens == 4  # nothing half-written


def test_missing_run_lists_runs_present(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_activations("present", "L", torch.randn(4, 8))
    with pytest.raises(StoreError, match=r"no activation run 'absent'.*present"):
        store.open("absent", "L")


def test_wrong_layer_lists_layers_present(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_activations("r", "blocks.3", torch.randn(4, 8))
    with pytest.raises(StoreError, match=r"layer 'blocks.9' not in run.*blocks.3"):
        store.open("r", "blocks.9")


def test_a_layer_name_that_only_ends_like_the_stored_one_is_not_it(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_activations("r", "synthetic", torch.randn(4, 8))
    for wrong in ("model.layers.3.synthetic", "layers_3_synthetic"):
        with pytest.raises(StoreError, match=f"layer '{wrong}' not in run"):
            store.open("r", wrong)
    store.put_activations("m", "GPT2Model_h_3", torch.randn(4, 8))
    assert store.open("m", "h.3").layer_signature == "GPT2Model_h_3"  # a model-class prefix
    with pytest.raises(StoreError, match="not in run"):
        store.open("m", "3")


def test_a_meta_json_dtype_unlike_its_shards_is_named(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_activations("r", "L", torch.randn(4, 8))
    meta_path = store.activation_dir("r") / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["dtype"] = "bfloat16"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="shard holds float32 but .*meta.json says dtype "
                                         "'bfloat16'"):
        store.open("r", "L")


def test_truncated_shard_is_named(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_activations("r", "L", torch.randn(100, 8))
    shard = tmp_path / "activations" / "r" / "shard_00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-64])
    with pytest.raises(StoreError, match=r"shard_00000.safetensors: unreadable or truncated"):
        store.open("r", "L")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_piece_is_read_as_the_shards_rows_in_every_dtype(tmp_path: Path, dtype):
    store = LocalStore(tmp_path)
    store.put_activations("r", "L", torch.randn(1000, 24), dtype=dtype, shard_tokens=400)
    src = store.open("r", "L")
    for i, start, stop in ((0, 0, 7), (1, 5, 300), (2, 150, 999), (0, 390, 400)):
        piece = src.read_piece(i, start, stop)
        assert piece.dtype == dtype
        assert torch.equal(piece, src.read_shard(i)[start:stop]), (i, start, stop)


def test_a_shard_cut_short_after_opening_is_named_when_a_piece_is_read(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_activations("r", "L", torch.randn(100, 8))
    src = store.open("r", "L")
    shard = tmp_path / "activations" / "r" / "shard_00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-64])
    with pytest.raises(StoreError, match=r"shard_00000.safetensors: truncated"):
        src.read_piece(0, 90, 100)
    bad = torch.randn(100, 8)
    bad[95, 1] = float("nan")
    save_file({"activations": bad}, str(shard))
    src = store.open("r", "L")
    with pytest.raises(StoreError, match=r"1 token\(s\) hold NaN or inf"):
        src.read_piece(0, 90, 100)


def test_shard_with_other_d_than_meta_is_named(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_activations("r", "L", torch.randn(10, 8))
    shard = tmp_path / "activations" / "r" / "shard_00000.safetensors"
    save_file({"activations": torch.randn(10, 6)}, str(shard))
    with pytest.raises(StoreError, match=r"shard_00000.safetensors: shard has d=6 .* d=8"):
        store.open("r", "L")


def test_nan_in_shard_is_reported_when_first_read(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_activations("r", "L", torch.randn(10, 8))
    bad = torch.randn(10, 8)
    bad[3, 2] = float("inf")
    save_file({"activations": bad}, str(tmp_path / "activations" / "r" / "shard_00000.safetensors"))
    src = store.open("r", "L")  # headers are fine
    with pytest.raises(StoreError, match=r"shard_00000.safetensors.*1 token\(s\) hold NaN or inf"):
        src.read_shard(0)


def test_empty_store_is_an_error(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_activations("r", "L", [])
    with pytest.raises(StoreError, match="empty store"):
        store.open("r", "L")
    (tmp_path / "runs" / "m" / "batch_0").mkdir(parents=True)
    with pytest.raises(StoreError, match="layer 'x' not found; layers present: \\[\\]"):
        store.open("m", "x")


def test_mi_crow_layout_drops_padding_and_accepts_both_layer_spellings(tmp_path: Path):
    real = write_padded_run(tmp_path, "mc", "transformer.h.0.attn.c_attn", n_batches=6, d=8)
    store = LocalStore(tmp_path)
    for spelling in ("transformer.h.0.attn.c_attn", flat("transformer.h.0.attn.c_attn")):
        src = store.open("mc", spelling)
        assert src.layout == "mi_crow" and src.d == 8
        assert src.layer_signature == flat("transformer.h.0.attn.c_attn")
        assert src.n_tokens == real
        tokens = torch.cat([src.read_shard(i) for i in range(len(src.shards))])
        assert tokens.shape == (real, 8)
        assert float(tokens.abs().max()) < 1e3  # the 1e4 padding sentinel never appears
    assert store.list_activation_runs() == ["mc"]
    assert src.model_id == "GPT2LMHeadModel"


def test_mi_crow_missing_layer_lists_layers(tmp_path: Path):
    write_padded_run(tmp_path, "mc", "transformer.h.0.mlp")
    with pytest.raises(StoreError, match=r"layer 'transformer.h.5.mlp' not found; layers "
                                         r"present: \['gpt2lmheadmodel_transformer_h_0_mlp'\]"):
        LocalStore(tmp_path).open("mc", "transformer.h.5.mlp")


def test_mi_crow_missing_batch_is_an_error(tmp_path: Path):
    write_padded_run(tmp_path, "mc", "h.0", n_batches=4)
    import shutil

    shutil.rmtree(tmp_path / "runs" / "mc" / "batch_2")
    with pytest.raises(StoreError, match=r"missing batch\(es\) \[2\]"):
        LocalStore(tmp_path).open("mc", "h.0")


def test_mi_crow_batch_without_the_layer_file_is_named(tmp_path: Path):
    write_padded_run(tmp_path, "mc", "h.0", n_batches=3)
    (tmp_path / "runs" / "mc" / "batch_1" / flat("h.0") / "activations.safetensors").unlink()
    with pytest.raises(StoreError, match=r"batch_1: batch has no activations for layer"):
        LocalStore(tmp_path).open("mc", "h.0")


def test_mi_crow_float16_and_truncated_batch(tmp_path: Path):
    write_padded_run(tmp_path, "mc", "h.0", n_batches=3, dtype=torch.float16)
    src = LocalStore(tmp_path).open("mc", "h.0")
    assert src.dtype == torch.float16
    f = tmp_path / "runs" / "mc" / "batch_1" / flat("h.0") / "activations.safetensors"
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(StoreError, match=r"batch_1/.*activations.safetensors: unreadable"):
        LocalStore(tmp_path).open("mc", "h.0")


def test_mi_crow_unified_and_old_single_file_layouts(tmp_path: Path):
    layer = flat("h.1")
    det = tmp_path / "runs" / "uni" / "detectors"
    (det / layer).mkdir(parents=True)
    (det / "attention_masks").mkdir()
    acts = {f"batch_{i}": torch.randn(2, 4, 8) for i in range(3)}
    masks = {f"batch_{i}": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
             for i in range(3)}
    save_file(acts, str(det / layer / "activations.safetensors"))
    save_file(masks, str(det / "attention_masks" / "attention_mask.safetensors"))
    src = LocalStore(tmp_path).open("uni", "h.1")
    assert src.n_tokens == 18 and len(src.shards) == 3

    old = tmp_path / "runs" / "old"
    old.mkdir(parents=True)
    write_run_meta(tmp_path, "old", [layer])
    for i in range(2):
        save_file({f"activations_{layer}": torch.randn(5, 8)},
                  str(old / f"batch_{i:06d}.safetensors"))
    src = LocalStore(tmp_path).open("old", "h.1")
    assert src.n_tokens == 10


class FlatLayout:
    """docs/architecture.md's worked example: one [tokens, d] tensor per run."""

    name = "flat"

    def __init__(self, base: Path) -> None:
        self.base = Path(base)

    def runs(self) -> list[str]:
        return sorted(p.stem for p in (self.base / "flat").glob("*.safetensors"))

    def holds(self, run_id: str) -> bool:
        return (self.base / "flat" / f"{run_id}.safetensors").exists()

    def where(self, run_id: str) -> str:
        return str(self.base / "flat" / f"{run_id}.safetensors")

    def open(self, run_id: str, layer_signature: str) -> ActivationSource:
        path = self.base / "flat" / f"{run_id}.safetensors"
        shape = header_shape(path, "x")
        return ActivationSource(run_id=run_id, layer_signature=layer_signature, d=shape[-1],
                                dtype=header_dtype(path, "x"), layout=self.name,
                                shards=[ShardRef(path=path, key="x", shape=shape,
                                                 n_tokens=shape[0])])


def test_a_new_layout_is_its_class_and_one_registry_line(tmp_path: Path, monkeypatch):
    (tmp_path / "flat").mkdir()
    save_file({"x": torch.randn(3000, 8)}, str(tmp_path / "flat" / "plain.safetensors"))
    with pytest.raises(StoreError, match="no activation run 'plain'"):
        LocalStore(tmp_path).open("plain", "L")
    monkeypatch.setitem(LAYOUTS, FlatLayout.name, FlatLayout)
    store = open_store(tmp_path)
    assert store.list_activation_runs() == ["plain"]
    source = store.open("plain", "L")
    assert (source.layout, source.d, source.n_tokens) == ("flat", 8, 3000)
    history = SaeTrainer(TopKSae(16, 8, 2, seed=0)).train(
        store=tmp_path, run_id="plain", layer_signature="L",
        config=SaeTrainingConfig(batch_size=256, progress=False), save=False)
    assert history.n_train_tokens > 2500


def test_open_store_is_the_one_constructor(tmp_path: Path):
    store = LocalStore(tmp_path)
    assert open_store(store) is store
    assert open_store(str(tmp_path)).base_path == tmp_path
    assert [type(layout).name for layout in store.layouts] == list(LAYOUTS)
