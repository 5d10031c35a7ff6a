"""Keras model builders (a registry) and the compiled training step."""

from fedaudit.models.registry import MODELS, build_model, register_model
from fedaudit.models.training import FitResult, Trainer, make_optimizer, train_model

__all__ = ["MODELS", "build_model", "register_model", "Trainer", "FitResult", "make_optimizer", "train_model"]
