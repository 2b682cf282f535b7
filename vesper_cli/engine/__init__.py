"""Vesper's engine: everything the commands do, importable and typer-free.

``train(cfg)`` runs ``vesper train``; ``run_benchmark(BenchConfig(...))`` runs ``vesper benchmark``; both
go through one :class:`Trainer` and its step function (:class:`TrainStep`). Nothing here prints or
exits: results come back as values, progress through observers.
"""

from vesper_cli.engine.control import StopControl
from vesper_cli.engine.merge import MergeResult, merge_checkpoint
from vesper_cli.engine.observer import RunInfo, StepMetrics, TrainObserver, TrainResult
from vesper_cli.engine.run_config import ModelSpec, RunConfig, TrainConfig, build_run_config
from vesper_cli.engine.step import StepOutcome, TrainStep
from vesper_cli.engine.trainer import Trainer, TrainingDivergedError, TrainingRun, build_training, train

__all__ = ["MergeResult", "ModelSpec", "RunConfig", "RunInfo", "StepMetrics", "StepOutcome", "StopControl", "TrainConfig",
           "TrainObserver", "TrainResult", "TrainStep", "Trainer", "TrainingDivergedError", "TrainingRun",
           "build_run_config", "build_training", "merge_checkpoint", "train"]
