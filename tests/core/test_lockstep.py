"""Several SAEs trained on the same batches: each must end exactly as if trained alone."""

import pytest
import torch

from harness import SaeTrainer, SaeTrainingConfig, StopTraining, TopKSae, TrainingDiverged
from harness.core.training import LockstepMember

BASE = dict(epochs=2, batch_size=256, eval_every=5, progress=False)


def _member(k: int, lr: float, callbacks=()) -> LockstepMember:
    return LockstepMember(sae=TopKSae(64, 16, k, seed=k), callbacks=callbacks, save=False,
                          config=SaeTrainingConfig(lr=lr, **BASE))


def test_pack_members_match_solo_training_and_drop_out_on_their_own(synthetic_store):
    def prune_at_10(result):
        if result.step >= 10:
            raise StopTraining("test prune")

    pack = [_member(2, 1e-3), _member(4, 3e-3, [prune_at_10]), _member(8, 10.0)]
    outcomes = SaeTrainer.train_lockstep(synthetic_store, "syn", "synthetic", pack)
    solo_sae = TopKSae(64, 16, 2, seed=2)
    solo = SaeTrainer(solo_sae).train(
        store=synthetic_store, run_id="syn", layer_signature="synthetic",
        config=SaeTrainingConfig(lr=1e-3, **BASE), save=False)
    assert outcomes[0].error is None
    assert outcomes[0].history["r2"] == solo["r2"]  # the same batches, the same result
    assert torch.equal(pack[0].sae.W_dec, solo_sae.W_dec)
    assert outcomes[1].history.stop_reason == "test prune"
    assert outcomes[1].history["step"][-1] == 10
    assert isinstance(outcomes[2].error, TrainingDiverged)  # lr=10 drops out, others go on
    assert outcomes[0].history["step"][-1] > 10


def test_members_must_share_the_data_stream(synthetic_store):
    a = _member(2, 1e-3)
    b = LockstepMember(sae=TopKSae(64, 16, 2), save=False,
                       config=SaeTrainingConfig(lr=1e-3, **{**BASE, "batch_size": 128}))
    with pytest.raises(ValueError, match="lockstep members disagree on batch_size"):
        SaeTrainer.train_lockstep(synthetic_store, "syn", "synthetic", [a, b])


def test_a_member_still_skipping_to_its_checkpoint_keeps_its_position_when_stopped(
        synthetic_store, tmp_path):
    from harness.core.training import TrainingInterrupted

    config = SaeTrainingConfig(lr=3e-3, **BASE)
    checkpoint = tmp_path / "b.pt"

    def member_b(path=None):
        return LockstepMember(sae=TopKSae(64, 16, 4, seed=4), config=config, save=False,
                              checkpoint_path=path)

    def stop_at(n):
        polls = iter(range(1, 10_000))
        return lambda: "SIGTERM" if next(polls) == n else None

    alone = member_b()
    SaeTrainer.train_lockstep(synthetic_store, "syn", "synthetic", [alone])
    with pytest.raises(TrainingInterrupted):  # b stops after 10 steps
        SaeTrainer.train_lockstep(synthetic_store, "syn", "synthetic",
                                  [member_b(checkpoint)], stop=stop_at(10))
    fresh = LockstepMember(sae=TopKSae(64, 16, 2, seed=2), config=config, save=False)
    with pytest.raises(TrainingInterrupted) as info:  # stopped while b skips its first 10
        SaeTrainer.train_lockstep(synthetic_store, "syn", "synthetic",
                                  [fresh, member_b(checkpoint)], stop=stop_at(5))
    assert info.value.checkpoints == {str(checkpoint): 10}
    resumed = member_b(checkpoint)
    SaeTrainer.train_lockstep(synthetic_store, "syn", "synthetic", [resumed])
    assert torch.equal(resumed.sae.W_dec, alone.sae.W_dec)  # no batch trained twice
