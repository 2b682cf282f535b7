"""Metacognition for VesperLM: a meta head (confidence, error types, termination), its
self-supervised targets, loss and calibration metrics, the three-stage regulator, and regulated
generation. Depends only on vesper_core."""

from vesper_metacog.config import MetacogConfig
from vesper_metacog.generation import TokenEvent, metacog_generate, sentence_boundary_ids
from vesper_metacog.head import MetaHead, MetaOutput
from vesper_metacog.losses import metacog_loss
from vesper_metacog.metrics import (CalibrationMeter, auroc, expected_calibration_error,
                                    reliability_bins)
from vesper_metacog.regulator import (CandidateScore, MetacognitiveRegulator, MetaWindow,
                                      RegulationDecision, RegulatorStep)
from vesper_metacog.targets import ERROR_TYPES, MetaTargets, compute_targets, compute_targets_from_hidden

__all__ = [
    "ERROR_TYPES", "CalibrationMeter", "CandidateScore", "MetaHead", "MetaOutput", "MetaTargets",
    "MetaWindow", "MetacogConfig", "MetacognitiveRegulator", "RegulationDecision", "RegulatorStep",
    "TokenEvent", "auroc", "compute_targets", "compute_targets_from_hidden", "expected_calibration_error", "metacog_generate",
    "metacog_loss", "reliability_bins", "sentence_boundary_ids",
]
