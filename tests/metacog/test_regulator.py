import pytest
import torch

from vesper_core.errors import ConfigError
from vesper_metacog import CandidateScore, MetacogConfig, MetacognitiveRegulator, MetaWindow


def regulator(**overrides):
    return MetacognitiveRegulator(MetacogConfig(hidden_size=8, **overrides))


NO_ERRORS = torch.zeros(4, 3)


def test_threshold_boundary_is_strict():
    reg = regulator()
    assert not reg.should_terminate(0.85, False, iteration=0)
    assert reg.should_terminate(0.8501, False, iteration=0)


def test_max_iterations_bound():
    reg = regulator(max_iterations=3)
    assert not reg.should_terminate(0.1, True, iteration=2)
    assert reg.should_terminate(0.1, True, iteration=3)
    off = regulator(enable_termination=False)
    assert not off.should_terminate(0.99, False, iteration=0)
    assert off.should_terminate(0.1, False, iteration=3)


def test_has_errors_blocks_termination():
    reg = regulator()
    assert not reg.should_terminate(0.99, True, iteration=0)
    assert not reg.should_terminate(0.99, True, iteration=0, termination_prob=0.4)


def test_termination_head_is_consulted_only_on_a_sound_span():
    reg = regulator(regulation_threshold=0.3)
    assert reg.should_terminate(0.3, False, iteration=0, termination_prob=0.7)
    assert not reg.should_terminate(0.3, False, iteration=0, termination_prob=0.5)  # strict
    assert not reg.should_terminate(0.29, False, iteration=0, termination_prob=0.99)  # lost
    assert not reg.should_terminate(0.6, True, iteration=0, termination_prob=0.99)  # errors


def test_weak_span_resamples_from_first_flagged_position():
    reg = regulator(regulation_threshold=0.3)
    decision = reg.regulate(torch.tensor([0.4, 0.35, 0.2, 0.1]), NO_ERRORS)  # mean 0.2625
    assert decision.resample_from == 2 and not decision.has_errors
    errors = NO_ERRORS.clone()
    errors[1, 2] = 0.7
    decision = reg.regulate(torch.tensor([0.9, 0.8, 0.2, 0.1]), errors)  # mean 0.5, an error
    assert decision.resample_from == 1 and decision.has_errors
    assert reg.regulate(torch.tensor([0.9, 0.8, 0.3, 0.5]), NO_ERRORS).resample_from is None


def test_one_low_token_in_a_sound_span_is_a_choice_point_not_a_mistake():
    reg = regulator(regulation_threshold=0.3)
    decision = reg.regulate(torch.tensor([0.9, 0.05, 0.6, 0.4]), NO_ERRORS)  # mean 0.4875
    assert decision.resample_from is None and not decision.has_errors
    assert reg.regulate(torch.tensor([0.3, 0.3]), torch.zeros(2, 3)).resample_from is None  # mean == threshold
    assert reg.regulate(torch.tensor([0.3, 0.29]), torch.zeros(2, 3)).resample_from == 1


def test_regulation_disabled_never_resamples_but_reports_errors():
    errors = NO_ERRORS.clone()
    errors[0, 0] = 0.9
    decision = regulator(enable_regulation=False).regulate(torch.zeros(4), errors)
    assert decision.resample_from is None and decision.has_errors


def test_planning_picks_argmax_first_on_ties():
    reg = regulator()
    scores = [CandidateScore(0.4), CandidateScore(0.9), CandidateScore(0.9), CandidateScore(0.1)]
    assert reg.plan(scores) == 1
    assert regulator(enable_planning=False).plan(scores) == 0
    assert CandidateScore.from_confidences(torch.tensor([0.2, 0.4])).mean_confidence == pytest.approx(0.3)
    with pytest.raises(ConfigError):
        reg.plan([])


def window(conf, term=None):
    conf = torch.tensor(conf)
    return MetaWindow(conf, torch.zeros(len(conf), 3),
                      None if term is None else torch.tensor(term))


def test_step_resamples_then_accepts_when_iterations_run_out():
    reg = regulator(max_iterations=2)
    low = window([0.5, 0.1, 0.2])  # mean 0.27 < 0.3
    first = reg.step(low, 0)
    assert (first.action, first.resample_from, first.iteration) == ("resample", 1, 1)
    second = reg.step(low, first.iteration)
    assert (second.action, second.iteration) == ("resample", 2)
    third = reg.step(low, second.iteration)
    assert (third.action, third.resample_from) == ("continue", None)


def test_a_redrawn_span_never_stops_the_generation():
    reg = regulator()
    confident = window([0.95, 0.97, 0.99], term=[0.9, 0.9, 0.9])
    assert reg.step(confident, 0).action == "stop"
    repaired = reg.step(confident, 1)
    assert (repaired.action, repaired.reason, repaired.iteration) == ("continue", None, 1)


def test_step_stops_when_satisficed_or_termination_head_says_so():
    reg = regulator()
    done = reg.step(window([0.9, 0.95, 0.9]))
    assert (done.action, done.reason) == ("stop", "satisficed")
    ending = reg.step(window([0.5, 0.5, 0.5], term=[0.1, 0.2, 0.8]))
    assert (ending.action, ending.reason) == ("stop", "termination")
    assert reg.step(window([0.5, 0.5, 0.5], term=[0.9, 0.2, 0.1])).action == "continue"
    lost = regulator(enable_regulation=False).step(window([0.1, 0.2, 0.1], term=[0.9, 0.9, 0.9]))
    assert (lost.action, lost.reason) == ("continue", None)  # the end is near but the model is lost
    assert regulator(enable_termination=False).step(window([0.99] * 3)).action == "continue"


def test_only_a_finished_span_can_stop():
    reg = regulator()
    confident = torch.tensor([0.95, 0.97, 0.99])
    cut = MetaWindow(confident, torch.zeros(3, 3), torch.tensor([0.9, 0.9, 0.9]), finished=False)
    assert (reg.step(cut).action, reg.step(cut).reason) == ("continue", None)
    assert reg.step(window([0.95, 0.97, 0.99])).reason == "satisficed"  # finished by default
