import math

import pytest
import torch

from harness.core.training.loss_monitor import LossMonitor, TrainingDiverged


def _monitor(losses: list[float], factor: float = 100.0) -> LossMonitor:
    monitor = LossMonitor(factor, torch.device("cpu"))
    for step, value in enumerate(losses):
        monitor.record(torch.tensor(value), step)
    return monitor


def test_nothing_to_report_and_the_mean_restarts():
    monitor = _monitor([2.0, 4.0, 150.0])  # 150 < 100 x the first loss
    monitor.check()
    assert monitor.take_mean() == pytest.approx(52.0)
    assert monitor.take_mean() == 0.0  # no step since


def test_the_first_diverged_step_is_reported_however_late_the_check():
    monitor = _monitor([2.0, 3.0, 250.0, float("nan"), 1.0])
    with pytest.raises(TrainingDiverged, match="exceeded 100x the first step's loss") as info:
        monitor.check()
    assert (info.value.step, info.value.loss) == (2, 250.0)


def test_a_non_finite_first_loss_is_reported_as_such():
    with pytest.raises(TrainingDiverged, match="non-finite") as info:
        _monitor([float("inf"), 1.0]).check()
    assert info.value.step == 0 and math.isinf(info.value.loss)


def test_state_round_trips_through_a_checkpoint():
    monitor = _monitor([2.0, 6.0])
    restored = LossMonitor(100.0, torch.device("cpu"))
    restored.load(monitor.state())
    restored.record(torch.tensor(201.0), 2)  # the restored first loss sets the threshold
    with pytest.raises(TrainingDiverged):
        restored.check()
    assert restored.take_mean() == pytest.approx((2 + 6 + 201) / 3)
