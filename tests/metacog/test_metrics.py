import math

import pytest
import torch

from vesper_metacog import CalibrationMeter, auroc, expected_calibration_error, reliability_bins


def test_ece_is_zero_for_perfectly_calibrated_bins():
    # 10 predictions at 0.8 with 8 right, 10 at 0.3 with 3 right
    conf = torch.tensor([0.8] * 10 + [0.3] * 10)
    correct = torch.tensor([1] * 8 + [0] * 2 + [1] * 3 + [0] * 7)
    assert expected_calibration_error(conf, correct, num_bins=10) == pytest.approx(0.0, abs=1e-6)


def test_ece_hand_example():
    # bin (0.8, 0.9]: conf 0.9 x2, one right -> |0.5 - 0.9| = 0.4, weight 2/4
    # bin (0.1, 0.2]: conf 0.2 x2, none right -> |0 - 0.2| = 0.2, weight 2/4  => ECE 0.3
    conf = torch.tensor([0.9, 0.9, 0.2, 0.2])
    correct = torch.tensor([True, False, False, False])
    assert expected_calibration_error(conf, correct, num_bins=10) == pytest.approx(0.3)


def test_reliability_bins():
    rows = reliability_bins(torch.tensor([0.05, 0.95, 0.95]), torch.tensor([0, 1, 0]), num_bins=2)
    assert [r["count"] for r in rows] == [1, 2]
    assert rows[1]["accuracy"] == pytest.approx(0.5) and rows[1]["confidence"] == pytest.approx(0.95)


def test_auroc_cases():
    labels = torch.tensor([0, 0, 1, 1])
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels) == pytest.approx(1.0)
    assert auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels) == pytest.approx(0.0)
    assert auroc(torch.tensor([0.5, 0.5, 0.5, 0.5]), labels) == pytest.approx(0.5)
    # one tie between a positive and a negative counts 1/2: pairs (p, n) = 4, wins = 3.5
    assert auroc(torch.tensor([0.1, 0.6, 0.6, 0.9]), labels) == pytest.approx(3.5 / 4)
    assert math.isnan(auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))


def test_meter_streams_the_same_numbers():
    torch.manual_seed(0)
    conf = torch.rand(1000)
    correct = torch.rand(1000) < conf
    meter = CalibrationMeter()
    for chunk in range(4):
        meter.update(conf[chunk * 250:(chunk + 1) * 250], correct[chunk * 250:(chunk + 1) * 250])
    result = meter.compute()
    assert result["count"] == 1000
    assert result["ece"] == pytest.approx(expected_calibration_error(conf, correct))
    assert result["auroc"] == pytest.approx(auroc(conf, correct), abs=1e-3)
    assert result["accuracy"] == pytest.approx(correct.float().mean().item())
    assert result["mean_confidence"] == pytest.approx(conf.mean().item(), rel=1e-6)


def test_meter_mask_and_empty():
    assert math.isnan(CalibrationMeter().compute()["ece"])
    meter = CalibrationMeter()
    meter.update(torch.tensor([[0.9, 0.1]]), torch.tensor([[1, 1]]), mask=torch.tensor([[True, False]]))
    assert meter.compute()["count"] == 1 and math.isnan(meter.compute()["auroc"])
