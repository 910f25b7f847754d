"""The sweep's sparse probing and absorption reuse the downstream evaluation's model copy."""

from __future__ import annotations

import pytest

from harness.sweep import latent_tasks


def test_the_downstream_models_copy_is_lent_not_loaded_again(monkeypatch):
    monkeypatch.setattr(latent_tasks, "_MODELS", {})
    monkeypatch.setattr(latent_tasks, "load_model",
                        lambda *a, **k: pytest.fail("the model was loaded a second time"))
    lm = object()
    latent_tasks.share_model("smollm2", "cpu", lm)  # type: ignore[arg-type]
    assert latent_tasks._model("smollm2", "cpu") is lm
    loaded = []
    monkeypatch.setattr(latent_tasks, "load_model", lambda *a, **k: loaded.append(a) or "other")
    assert latent_tasks._model("smollm2", "cuda:0") == "other"  # another device: its own copy
    assert latent_tasks._model("smollm2", "cuda:0") == "other" and len(loaded) == 1
