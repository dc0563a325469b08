"""Linear Learner hyperparameters: parsed from the strings SageMaker passes, validated.

SageMaker hands an algorithm its hyperparameters as a JSON object of *strings*
(``/opt/ml/input/config/hyperparameters.json``). :func:`parse_hyperparameters` turns
that mapping into a typed, frozen :class:`Hyperparameters`, resolving every ``auto``
that does not depend on the data. Anything it does not understand is an error, never
silently ignored: an unknown name, a Linear Learner hyperparameter this local
implementation does not implement, or a value that does not parse or is out of range
raises :class:`HyperparameterError` naming the hyperparameter and the value.

The three values left as ``None`` (meaning ``auto``) are ``feature_dim`` (taken from
the data), and ``learning_rate``, ``wd`` and ``l1``, which ``auto`` turns into a
different value per candidate model (see :mod:`.training`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

__all__ = [
    "DEFAULTS",
    "SUPPORTED_LOSSES",
    "HyperparameterError",
    "Hyperparameters",
    "parse_hyperparameters",
]

T = TypeVar("T")

AUTO: Final = "auto"
AUTO_NUM_MODELS: Final = 32
"""What ``num_models=auto`` resolves to (Linear Learner's own choice for regressors)."""
MAX_NUM_MODELS: Final = 1024
"""A local limit: every candidate is a row of one weight matrix held in memory."""

SUPPORTED_LOSSES: Final = ("squared_loss", "absolute_loss", "huber_loss")

# Values Linear Learner accepts that this implementation does not: named in the error
# so that a user can tell "you mistyped" from "the local Linear Learner lacks this".
_LL_UNSUPPORTED_LOSSES: Final = frozenset(
    {"eps_insensitive_squared_loss", "eps_insensitive_absolute_loss", "quantile_loss"}
)
_LL_CLASSIFIER_LOSSES: Final = frozenset({"logistic", "hinge_loss", "softmax_loss"})
_LL_UNSUPPORTED_NAMES: Final = frozenset(
    {
        "accuracy_top_k",
        "balance_multiclass_weights",
        "beta_1",
        "beta_2",
        "bias_lr_mult",
        "bias_wd_mult",
        "binary_classifier_model_selection_criteria",
        "f_beta",
        "init_bias",
        "init_method",
        "init_scale",
        "init_sigma",
        "loss_insensitivity",
        "lr_scheduler_factor",
        "lr_scheduler_minimum_lr",
        "lr_scheduler_step",
        "margin",
        "momentum",
        "num_calibration_samples",
        "num_classes",
        "positive_example_weight_mult",
        "quantile",
        "target_precision",
        "target_recall",
        "unbias_data",
        "unbias_label",
    }
)

DEFAULTS: Final[Mapping[str, str]] = {
    "feature_dim": AUTO,
    "loss": AUTO,
    "huber_delta": "1.0",
    "epochs": "15",
    "mini_batch_size": "1000",
    "num_models": AUTO,
    "learning_rate": AUTO,
    "wd": AUTO,
    "l1": AUTO,
    "normalize_data": "true",
    "normalize_label": AUTO,
    "use_bias": "true",
    "early_stopping_patience": "3",
    "early_stopping_tolerance": "0.001",
    "optimizer": AUTO,
    "num_point_for_scaler": "10000",
}
"""Linear Learner's documented default for every optional hyperparameter supported here.

``predictor_type`` has no default: Linear Learner requires it.
"""


class HyperparameterError(ValueError):
    """A hyperparameter is unknown, unsupported, missing or has an invalid value.

    Parameters
    ----------
    name
        The hyperparameter's name.
    value
        The value as received (``None`` when the hyperparameter is missing).
    reason
        What is wrong, in words a user can act on.
    """

    def __init__(self, name: str, value: object, reason: str) -> None:
        self.name = name
        self.value = value
        self.reason = reason
        shown = "" if value is None else f"={value!r}"
        super().__init__(f"hyperparameter {name}{shown}: {reason}")


@dataclass(frozen=True)
class Hyperparameters:
    """Validated Linear Learner hyperparameters for a regressor.

    ``None`` stands for ``auto`` where the value depends on the data or differs per
    candidate model (``feature_dim``, ``learning_rate``, ``wd``, ``l1``); every other
    ``auto`` is already resolved (``loss=auto`` is ``squared_loss`` for a regressor,
    ``num_models=auto`` is 32, ``normalize_label=auto`` is true, ``optimizer=auto`` is
    ``adam``).
    """

    predictor_type: str = "regressor"
    feature_dim: int | None = None
    loss: str = "squared_loss"
    huber_delta: float = 1.0
    epochs: int = 15
    mini_batch_size: int = 1000
    num_models: int = AUTO_NUM_MODELS
    learning_rate: float | None = None
    wd: float | None = None
    l1: float | None = None
    normalize_data: bool = True
    normalize_label: bool = True
    use_bias: bool = True
    early_stopping_patience: int = 3
    early_stopping_tolerance: float = 0.001
    optimizer: str = "adam"
    num_point_for_scaler: int = 10000

    def to_json_dict(self) -> dict[str, str | int | float | bool]:
        """Return the hyperparameters as JSON values, ``"auto"`` for unresolved ones.

        Returns
        -------
        dict
            One entry per hyperparameter, in declaration order.
        """
        out: dict[str, str | int | float | bool] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = AUTO if value is None else value
        return out


def parse_hyperparameters(raw: Mapping[str, str]) -> Hyperparameters:
    """Validate Linear Learner hyperparameters given as strings, as SageMaker passes them.

    Parameters
    ----------
    raw
        Hyperparameter name to string value. ``predictor_type`` is required; every
        other supported name is optional (see :data:`DEFAULTS`).

    Returns
    -------
    Hyperparameters
        The typed values, with data-independent ``auto`` values resolved.

    Raises
    ------
    HyperparameterError
        For an unknown or unsupported name, a missing ``predictor_type``, a value that
        is not a string, does not parse, or is out of range.
    """
    for name, value in raw.items():
        if name in _LL_UNSUPPORTED_NAMES:
            raise HyperparameterError(
                name,
                value,
                "is a Linear Learner hyperparameter that the local Linear Learner does not "
                f"implement; supported: predictor_type, {', '.join(DEFAULTS)}",
            )
        if name != "predictor_type" and name not in DEFAULTS:
            raise HyperparameterError(
                name,
                value,
                f"unknown hyperparameter; supported: predictor_type, {', '.join(DEFAULTS)}",
            )
        if not isinstance(value, str):
            raise HyperparameterError(
                name, value, "must be a string (SageMaker passes every hyperparameter as one)"
            )

    values = {**DEFAULTS, **{k: v.strip() for k, v in raw.items()}}

    def get(name: str, parse: Callable[[str, str], T]) -> T:
        return parse(name, values[name])

    if "predictor_type" not in values:
        raise HyperparameterError(
            "predictor_type", None, "is required (the local Linear Learner supports 'regressor')"
        )
    predictor_type = values["predictor_type"]
    if predictor_type != "regressor":
        known = predictor_type in {"binary_classifier", "multiclass_classifier"}
        raise HyperparameterError(
            "predictor_type",
            predictor_type,
            "the local Linear Learner implements only 'regressor'"
            if known
            else "must be 'regressor' (Linear Learner also knows binary_classifier and "
            "multiclass_classifier, which the local Linear Learner does not implement)",
        )

    loss = values["loss"]
    if loss == AUTO:
        loss = "squared_loss"
    elif loss in _LL_UNSUPPORTED_LOSSES:
        raise HyperparameterError(
            "loss",
            loss,
            "is a Linear Learner loss that the local Linear Learner does not implement; "
            f"supported: auto, {', '.join(SUPPORTED_LOSSES)}",
        )
    elif loss in _LL_CLASSIFIER_LOSSES:
        raise HyperparameterError(
            "loss", loss, "is a classification loss, not valid for a regressor"
        )
    elif loss not in SUPPORTED_LOSSES:
        raise HyperparameterError(
            "loss", loss, f"must be one of auto, {', '.join(SUPPORTED_LOSSES)}"
        )

    optimizer = values["optimizer"]
    if optimizer == AUTO:
        optimizer = "adam"
    elif optimizer == "rmsprop":
        raise HyperparameterError(
            "optimizer", optimizer, "the local Linear Learner implements adam and sgd only"
        )
    elif optimizer not in {"adam", "sgd"}:
        raise HyperparameterError("optimizer", optimizer, "must be one of auto, adam, sgd")

    num_models = _or_auto(_positive_int, "a positive integer")("num_models", values["num_models"])
    if num_models is not None and num_models > MAX_NUM_MODELS:
        raise HyperparameterError(
            "num_models", values["num_models"], f"must be at most {MAX_NUM_MODELS}"
        )

    return Hyperparameters(
        predictor_type=predictor_type,
        feature_dim=get("feature_dim", _or_auto(_positive_int, "a positive integer")),
        loss=loss,
        huber_delta=get("huber_delta", _positive_float),
        epochs=get("epochs", _positive_int),
        mini_batch_size=get("mini_batch_size", _positive_int),
        num_models=AUTO_NUM_MODELS if num_models is None else num_models,
        learning_rate=get("learning_rate", _or_auto(_positive_float, "a number greater than 0")),
        wd=get("wd", _or_auto(_non_negative_float, "a number, 0 or greater")),
        l1=get("l1", _or_auto(_non_negative_float, "a number, 0 or greater")),
        normalize_data=get("normalize_data", _bool_or_auto(auto=True)),
        normalize_label=get("normalize_label", _bool_or_auto(auto=True)),
        use_bias=get("use_bias", _bool),
        early_stopping_patience=get("early_stopping_patience", _positive_int),
        early_stopping_tolerance=get("early_stopping_tolerance", _positive_float),
        optimizer=optimizer,
        num_point_for_scaler=get("num_point_for_scaler", _positive_int),
    )


def _positive_int(name: str, text: str) -> int:
    # int() alone would accept "1_000" and " +3"; SageMaker's own validation would not.
    if not (text.isascii() and text.isdigit()):
        raise HyperparameterError(name, text, "must be a positive integer")
    value = int(text)
    if value < 1:
        raise HyperparameterError(name, text, "must be a positive integer")
    return value


def _float(name: str, text: str) -> float:
    try:
        # float() would also take "1_000"; keep to what a user would call a number.
        value = float(text) if "_" not in text else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise HyperparameterError(name, text, "must be a finite number")
    return value


def _positive_float(name: str, text: str) -> float:
    value = _float(name, text)
    if value <= 0:
        raise HyperparameterError(name, text, "must be greater than 0")
    return value


def _non_negative_float(name: str, text: str) -> float:
    value = _float(name, text)
    if value < 0:
        raise HyperparameterError(name, text, "must be 0 or greater")
    return value


def _bool(name: str, text: str) -> bool:
    # The SageMaker Python SDK sends Python booleans as "True"/"False".
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise HyperparameterError(name, text, "must be true or false")


def _bool_or_auto(*, auto: bool) -> Callable[[str, str], bool]:
    def parse(name: str, text: str) -> bool:
        if text.lower() == AUTO:
            return auto
        try:
            return _bool(name, text)
        except HyperparameterError:
            raise HyperparameterError(name, text, "must be auto, true or false") from None

    return parse


def _or_auto(parse: Callable[[str, str], T], expected: str) -> Callable[[str, str], T | None]:
    def parse_or_auto(name: str, text: str) -> T | None:
        if text.lower() == AUTO:
            return None
        try:
            return parse(name, text)
        except HyperparameterError:
            raise HyperparameterError(name, text, f"must be auto or {expected}") from None

    return parse_or_auto
