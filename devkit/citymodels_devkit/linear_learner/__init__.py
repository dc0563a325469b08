"""The local Linear Learner: a small numpy re-implementation of SageMaker's Linear Learner.

The local stack runs it wherever a training job asks for the linear-learner image, and
serves its models on the local multi-model endpoint. It reads the same channels
(``text/csv;label_size=1``), accepts the same hyperparameters (as strings), reports the
same metric names, and answers inference in Linear Learner's JSON format. Only the
``regressor`` predictor type is implemented. See ``docs/linear-learner.md``.

Typical use::

    from citymodels_devkit.linear_learner import load_model, train

    result = train({"train": train_dir, "validation": val_dir},
                   {"predictor_type": "regressor", "loss": "absolute_loss"}, model_dir)
    model = load_model(result.model_path)
    model.predict([[2005, 2500.0, 3, 2.0, 1.1, 2, 1, 0, 0, 1]])
"""

from pathlib import Path

from .hyperparameters import HyperparameterError, Hyperparameters, parse_hyperparameters
from .model import (
    InferenceError,
    LinearLearnerModel,
    ModelFormatError,
    Normalization,
    load_model,
)
from .training import (
    Candidate,
    DataError,
    TrainingInfo,
    TrainingResult,
    evaluate,
    fit,
    read_channel,
    train,
)


def run_training(ml_root: Path, *, seed: int = 0) -> int:
    """Run one training job following the SageMaker container contract.

    See :func:`citymodels_devkit.linear_learner.container.run_training`.

    Parameters
    ----------
    ml_root
        The container root (``/opt/ml`` in SageMaker).
    seed
        Seeds training (the scaler sample and mini-batch order).

    Returns
    -------
    int
        0 on success, non-zero on failure (the reason is in ``output/failure``).
    """
    # Imported on use: importing the container module from here would make
    # ``python -m citymodels_devkit.linear_learner.container`` warn that the module
    # was already imported before it ran as __main__.
    from .container import run_training as run

    return run(ml_root, seed=seed)


__all__ = [
    "Candidate",
    "DataError",
    "HyperparameterError",
    "Hyperparameters",
    "InferenceError",
    "LinearLearnerModel",
    "ModelFormatError",
    "Normalization",
    "TrainingInfo",
    "TrainingResult",
    "evaluate",
    "fit",
    "load_model",
    "parse_hyperparameters",
    "read_channel",
    "run_training",
    "train",
]
