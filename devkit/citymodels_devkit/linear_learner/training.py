"""Training: read ``text/csv;label_size=1`` channels, train candidates together, keep the best.

The algorithm follows SageMaker's Linear Learner for a regressor:

1. Standardise features and label with statistics of (a sample of) the training data.
2. Train ``num_models`` linear models at once from zero: their weights are the rows of
   one ``(num_models, feature_dim)`` matrix, so each mini-batch costs one matrix
   product for all of them. Candidates differ in learning rate and regularisation
   where those are ``auto``; an explicit value applies to every candidate.
3. Each epoch visits the training rows in a seeded random order, in mini-batches, with
   Adam (or plain SGD) and a learning rate that decays geometrically to 1/1000 of its
   start over the planned updates. L2 (``wd``) is added to the gradient; L1 (``l1``) is
   a proximal soft-threshold step, so large ``l1`` gives exact zeros.
4. At the end of each epoch every candidate is scored on the validation channel (the
   training data without one) using the *average* of its iterates over the epoch, and
   each candidate keeps its best epoch. Training stops early when the best candidate's
   loss has not improved by the relative ``early_stopping_tolerance`` for
   ``early_stopping_patience`` epochs.
5. The candidate with the lowest validation objective wins; its weights are mapped back
   to original units so that prediction is a plain dot product.

``docs/linear-learner.md`` describes this in full, with the artifact and the metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .hyperparameters import Hyperparameters, parse_hyperparameters
from .model import LinearLearnerModel, Normalization

__all__ = [
    "CHANNELS",
    "Candidate",
    "DataError",
    "TrainingInfo",
    "TrainingResult",
    "evaluate",
    "fit",
    "read_channel",
    "train",
]

FloatArray = NDArray[np.float64]

CHANNELS: Final = ("train", "validation", "test")
"""The channels Linear Learner reads; ``train`` is required."""

AUTO_LEARNING_RATES: Final = (1.0, 0.01)
"""With ``learning_rate=auto``, candidates' Adam learning rates span this range
(geometrically, largest first); one candidate alone gets their geometric mean."""
AUTO_REGULARISATION: Final = (0.0, 1e-5, 1e-4, 1e-3)
"""With ``wd`` or ``l1`` ``auto``, candidate *i* uses entry ``i % 4`` (in standardised units)."""
LEARNING_RATE_DECAY: Final = 1e-3
"""Each candidate's learning rate ends at this fraction of its start..."""
SLOWEST_DECAY_PER_UPDATE: Final = 0.9
"""...unless that would shrink it faster than this per update (few planned updates)."""
ADAM_BETA1: Final = 0.7
ADAM_BETA2: Final = 0.999
ADAM_EPSILON: Final = 1e-8


class DataError(ValueError):
    """Channel data that cannot be trained on; the message names channel, file and line."""


@dataclass(frozen=True)
class Candidate:
    """One of the models trained together, with its (resolved) settings.

    ``wd`` and ``l1`` are in standardised units (as Linear Learner applies them).
    """

    index: int
    learning_rate: float
    wd: float
    l1: float


@dataclass(frozen=True)
class TrainingInfo:
    """How a :func:`fit` went.

    Attributes
    ----------
    epochs_run
        Epochs completed (fewer than ``epochs`` when early stopping ended training).
    updates
        Optimizer steps taken (mini-batches processed).
    stopped_early
        Whether early stopping ended training.
    best_candidate
        The candidate that won.
    best_epoch
        The epoch (from 1) whose weights the winner kept.
    selection_channel
        ``"validation"``, or ``"train"`` when no validation data was given.
    epoch_losses
        Per epoch, the lowest objective loss of any candidate on the selection channel,
        in standardised label units (what early stopping watched).
    candidates
        Every candidate, in index order.
    """

    epochs_run: int
    updates: int
    stopped_early: bool
    best_candidate: Candidate
    best_epoch: int
    selection_channel: str
    epoch_losses: tuple[float, ...]
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class TrainingResult:
    """What :func:`train` produced.

    Attributes
    ----------
    metrics
        Final metrics under Linear Learner's names (``validation:mse``, ``test:rmse``...),
        in original label units.
    epochs_run
        Epochs completed.
    best_candidate
        The winning candidate.
    model_path
        The written ``model.tar.gz``.
    model
        The trained model (the artifact's content).
    info
        Training details from :func:`fit`.
    """

    metrics: dict[str, float]
    epochs_run: int
    best_candidate: Candidate
    model_path: Path
    model: LinearLearnerModel
    info: TrainingInfo


def train(
    channels: Mapping[str, Path],
    hyperparameters: Mapping[str, str],
    model_dir: Path,
    *,
    seed: int = 0,
) -> TrainingResult:
    """Train from CSV channels and write ``model.tar.gz``, as a Linear Learner job does.

    Parameters
    ----------
    channels
        Channel name (``train``, optional ``validation`` and ``test``) to a directory
        of headerless CSV files, or to a single file: label in the first column, then
        the features.
    hyperparameters
        Linear Learner hyperparameters as strings (see :func:`parse_hyperparameters`).
    model_dir
        Directory to write ``model.tar.gz`` into.
    seed
        Seeds the scaler sample and the mini-batch order: the same data,
        hyperparameters and seed give the same model, byte for byte.

    Returns
    -------
    TrainingResult

    Raises
    ------
    HyperparameterError
        For invalid hyperparameters.
    DataError
        For a missing ``train`` channel, an unknown channel, or unreadable data.
    """
    hp = parse_hyperparameters(hyperparameters)
    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown:
        raise DataError(
            f"unknown channel {unknown[0]!r}: Linear Learner reads train, validation and test"
        )
    if "train" not in channels:
        raise DataError("the train channel is required")
    x_train, y_train = read_channel(channels["train"], "train", hp.feature_dim)
    feature_dim = x_train.shape[1]
    data = {"train": (x_train, y_train)}
    for name in ("validation", "test"):
        if name in channels:
            data[name] = read_channel(channels[name], name, feature_dim)

    x_val, y_val = data.get("validation", (None, None))
    model, info = fit(x_train, y_train, x_val, y_val, hp, seed=seed)

    metrics = {"train:objective_loss": evaluate(model, x_train, y_train)["objective_loss"]}
    for name in ("validation", "test"):
        if name in data:
            scores = evaluate(model, *data[name])
            metrics.update({f"{name}:{metric}": value for metric, value in scores.items()})
    model = replace(model, metrics=metrics)
    path = model.save(model_dir)
    return TrainingResult(
        metrics=metrics,
        epochs_run=info.epochs_run,
        best_candidate=info.best_candidate,
        model_path=path,
        model=model,
        info=info,
    )


def fit(
    X: ArrayLike,  # noqa: N803 - scikit-learn's naming, which users of this API know
    y: ArrayLike,
    X_val: ArrayLike | None,  # noqa: N803
    y_val: ArrayLike | None,
    hp: Hyperparameters | Mapping[str, str],
    seed: int = 0,
) -> tuple[LinearLearnerModel, TrainingInfo]:
    """Train on arrays (no file I/O): the core of :func:`train`.

    Parameters
    ----------
    X, y
        Training features ``(n, feature_dim)`` and labels ``(n,)``.
    X_val, y_val
        Validation data used for early stopping and model selection, or ``None`` to
        use the training data for both.
    hp
        Parsed :class:`Hyperparameters`, or the raw string mapping.
    seed
        Seeds the scaler sample and the mini-batch order.

    Returns
    -------
    tuple of (LinearLearnerModel, TrainingInfo)
        The winning model (without metrics; :func:`train` adds them) and how training
        went.

    Raises
    ------
    DataError
        For empty, non-finite or mis-shaped arrays, or when every candidate diverged.
    HyperparameterError
        For invalid raw hyperparameters.
    """
    if not isinstance(hp, Hyperparameters):
        hp = parse_hyperparameters(hp)
    x = _matrix(X, "X")
    t_raw = _labels(y, "y", x.shape[0])
    if hp.feature_dim is not None and x.shape[1] != hp.feature_dim:
        raise DataError(f"X has {x.shape[1]} features but feature_dim is {hp.feature_dim}")
    if (X_val is None) != (y_val is None):
        raise DataError("give both X_val and y_val, or neither")
    rng = np.random.default_rng(seed)
    normalization = _normalization(x, t_raw, hp, rng)
    mean = np.asarray(normalization.feature_mean)
    scale = np.asarray(normalization.feature_scale)
    z = (x - mean) / scale
    t = (t_raw - normalization.label_mean) / normalization.label_scale
    if X_val is not None and y_val is not None:
        xv = _matrix(X_val, "X_val")
        if xv.shape[1] != x.shape[1]:
            raise DataError(f"X_val has {xv.shape[1]} features, X has {x.shape[1]}")
        zv = (xv - mean) / scale
        tv = (_labels(y_val, "y_val", xv.shape[0]) - normalization.label_mean) / (
            normalization.label_scale
        )
        selection_channel = "validation"
    else:
        zv, tv, selection_channel = z, t, "train"

    candidates = _candidates(hp, z)
    trainer = _Trainer(hp, candidates, z.shape[1])
    outcome = trainer.run(z, t, zv, tv, rng)

    k = outcome.winner
    # Fold the standardisation into the weights: w_orig = w * label_scale / feature_scale.
    weights = outcome.weights[k] * normalization.label_scale / scale
    bias = (
        normalization.label_mean
        + normalization.label_scale * outcome.biases[k]
        - float(weights @ mean)
    )
    model = LinearLearnerModel(
        weights=tuple(float(w) for w in weights),
        bias=float(bias),
        normalization=normalization,
        loss=hp.loss,
        predictor_type=hp.predictor_type,
        hyperparameters={**hp.to_json_dict(), "feature_dim": x.shape[1]},
        epochs_run=outcome.epochs_run,
        best_candidate={
            "index": k,
            "learning_rate": candidates[k].learning_rate,
            "wd": candidates[k].wd,
            "l1": candidates[k].l1,
            "epoch": outcome.best_epoch,
        },
    )
    info = TrainingInfo(
        epochs_run=outcome.epochs_run,
        updates=outcome.updates,
        stopped_early=outcome.stopped_early,
        best_candidate=candidates[k],
        best_epoch=outcome.best_epoch,
        selection_channel=selection_channel,
        epoch_losses=outcome.epoch_losses,
        candidates=candidates,
    )
    return model, info


def evaluate(model: LinearLearnerModel, X: ArrayLike, y: ArrayLike) -> dict[str, float]:  # noqa: N803
    """Score a model on labelled data, in original label units.

    Parameters
    ----------
    model
        The model to score.
    X, y
        Features ``(n, feature_dim)`` and labels ``(n,)``.

    Returns
    -------
    dict
        ``objective_loss`` (the training loss: absolute, squared, or Huber with
        ``huber_delta`` scaled to label units), ``absolute_loss`` (mean absolute error),
        ``mse``, ``rmse`` and ``r2``.
    """
    x = _matrix(X, "X")
    labels = _labels(y, "y", x.shape[0])
    residual = x @ np.asarray(model.weights) + model.bias - labels
    abs_residual = np.abs(residual)
    mse = float(np.mean(residual * residual))
    total = float(np.sum((labels - labels.mean()) ** 2))
    residual_sum = mse * len(labels)
    # sklearn's convention for a constant label: perfect fit scores 1, anything else 0.
    r2 = 1.0 - residual_sum / total if total > 0 else (1.0 if residual_sum == 0 else 0.0)
    if model.loss == "absolute_loss":
        objective = float(np.mean(abs_residual))
    elif model.loss == "huber_loss":
        delta = float(model.hyperparameters.get("huber_delta", 1.0) or 1.0)
        objective = float(np.mean(_huber(abs_residual, delta * model.normalization.label_scale)))
    else:
        objective = mse
    return {
        "objective_loss": objective,
        "absolute_loss": float(np.mean(abs_residual)),
        "mse": mse,
        "rmse": math.sqrt(mse),
        "r2": r2,
    }


def read_channel(
    path: Path, channel: str, feature_dim: int | None = None
) -> tuple[FloatArray, FloatArray]:
    """Read a ``text/csv;label_size=1`` channel: headerless CSV, label first.

    Parameters
    ----------
    path
        A directory (every non-hidden file under it, in name order) or a single file.
    channel
        The channel's name, for error messages.
    feature_dim
        Required number of features, or ``None`` to take it from the first row.

    Returns
    -------
    tuple of (ndarray, ndarray)
        Features ``(n, feature_dim)`` and labels ``(n,)``, float64.

    Raises
    ------
    DataError
        Naming the channel, file and line of the first problem: a missing or empty
        channel, text that is not UTF-8, a row of the wrong width, a value that is not a
        finite number.
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    else:
        raise DataError(f"channel {channel!r}: {path} does not exist")
    if not files:
        raise DataError(f"channel {channel!r}: no data files in {path}")
    width = None if feature_dim is None else feature_dim + 1
    blocks: list[FloatArray] = []
    for file in files:
        where = f"channel {channel!r}, file {file.name if file == path else file.relative_to(path)}"
        block = _read_csv(file, where, width)
        if block is not None:
            width = block.shape[1]
            blocks.append(block)
    if not blocks:
        raise DataError(f"channel {channel!r}: the files in {path} have no rows")
    table = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    return np.ascontiguousarray(table[:, 1:]), np.ascontiguousarray(table[:, 0])


def _read_csv(file: Path, where: str, width: int | None) -> FloatArray | None:
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{where}: not UTF-8 text ({error})") from None
    lines = text.splitlines()
    rows = [line for line in lines if line and not line.isspace()]
    if not rows:
        return None
    if width is None:
        width = rows[0].count(",") + 1
        if width < 2:
            raise DataError(
                f"{where} line 1: a row needs the label and at least one feature, got 1 value"
            )
    # Fast path: one split and one vectorised conversion for the whole file. Any
    # anomaly falls back to the line-by-line scan, which names the first bad line.
    cells = ",".join(rows).split(",")
    if len(cells) == len(rows) * width:
        try:
            flat = np.array(cells, dtype=np.float64)
        except ValueError:
            flat = None
        if flat is not None and np.isfinite(flat).all():
            return flat.reshape(len(rows), width)
    _raise_first_problem(lines, where, width)
    raise AssertionError("unreachable: a problem was detected but not located")  # pragma: no cover


def _raise_first_problem(lines: list[str], where: str, width: int) -> None:
    for number, line in enumerate(lines, start=1):
        if not line or line.isspace():
            continue
        cells = line.split(",")
        if len(cells) != width:
            raise DataError(
                f"{where} line {number}: expected {width} values (label and {width - 1} "
                f"features), got {len(cells)}"
            )
        for column, cell in enumerate(cells, start=1):
            try:
                value = float(cell)
            except ValueError:
                hint = " (the files must not have a header row)" if number == 1 else ""
                raise DataError(
                    f"{where} line {number}, column {column}: {cell.strip()!r} is not a "
                    f"number{hint}"
                ) from None
            if not math.isfinite(value):
                raise DataError(
                    f"{where} line {number}, column {column}: {cell.strip()!r} is not finite"
                )


def _matrix(values: ArrayLike, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{name} must be a non-empty 2-d array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{name} has non-finite values")
    return array


def _labels(values: ArrayLike, name: str, rows: int) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (rows,):
        raise DataError(f"{name} must have shape ({rows},), got {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{name} has non-finite values")
    return array


def _normalization(
    x: FloatArray, y: FloatArray, hp: Hyperparameters, rng: np.random.Generator
) -> Normalization:
    n, d = x.shape
    # Like Linear Learner, the statistics come from a sample of num_point_for_scaler rows.
    if n > hp.num_point_for_scaler:
        sample = np.sort(rng.choice(n, size=hp.num_point_for_scaler, replace=False))
        xs, ys = x[sample], y[sample]
    else:
        xs, ys = x, y
    # Without a bias the model must pass through the origin, so nothing is shifted.
    if hp.normalize_data:
        std = xs.std(axis=0)
        feature_scale = np.where(std > 0, std, 1.0)  # constant columns stay unscaled
        feature_mean = xs.mean(axis=0) if hp.use_bias else np.zeros(d)
    else:
        feature_scale, feature_mean = np.ones(d), np.zeros(d)
    label_mean, label_scale = 0.0, 1.0
    if hp.normalize_label:
        std_y = float(ys.std())
        label_scale = std_y if std_y > 0 else 1.0
        label_mean = float(ys.mean()) if hp.use_bias else 0.0
    return Normalization(
        feature_mean=tuple(float(v) for v in feature_mean),
        feature_scale=tuple(float(v) for v in feature_scale),
        label_mean=label_mean,
        label_scale=label_scale,
    )


def _candidates(hp: Hyperparameters, z: FloatArray) -> tuple[Candidate, ...]:
    count = hp.num_models
    if hp.learning_rate is not None:
        rates = np.full(count, hp.learning_rate)
    else:
        high, low = AUTO_LEARNING_RATES
        rates = np.geomspace(high, low, count) if count > 1 else np.array([math.sqrt(high * low)])
        # Unstandardised features: a step must not move predictions by more than the
        # step on standardised data would, so shrink by the largest column scale (Adam
        # steps are ~lr per weight) or its square (SGD steps scale with the gradient).
        spread = max(1.0, float(np.sqrt(np.mean(z * z, axis=0)).max()))
        rates = rates / (spread if hp.optimizer == "adam" else spread * spread)
    levels = len(AUTO_REGULARISATION)
    return tuple(
        Candidate(
            index=i,
            learning_rate=float(rates[i]),
            wd=hp.wd if hp.wd is not None else AUTO_REGULARISATION[i % levels],
            l1=hp.l1 if hp.l1 is not None else AUTO_REGULARISATION[i % levels],
        )
        for i in range(count)
    )


def _huber(abs_residual: FloatArray, delta: float) -> FloatArray:
    return np.where(
        abs_residual <= delta,
        0.5 * abs_residual * abs_residual,
        delta * (abs_residual - 0.5 * delta),
    )


@dataclass(frozen=True)
class _Outcome:
    weights: FloatArray
    biases: FloatArray
    winner: int
    best_epoch: int
    epochs_run: int
    updates: int
    stopped_early: bool
    epoch_losses: tuple[float, ...]


class _Trainer:
    """All candidates' state as ``(num_models, ...)`` arrays, updated together."""

    def __init__(self, hp: Hyperparameters, candidates: tuple[Candidate, ...], dim: int) -> None:
        self.hp = hp
        count = len(candidates)
        self.rates = np.array([c.learning_rate for c in candidates])
        self.wd = np.array([c.wd for c in candidates])[:, None]
        self.l1 = np.array([c.l1 for c in candidates])[:, None]
        self.use_wd = bool(self.wd.any())
        self.use_l1 = bool(self.l1.any())
        self.weights = np.zeros((count, dim))
        self.biases = np.zeros(count)
        self.m_w = np.zeros((count, dim))
        self.v_w = np.zeros((count, dim))
        self.m_b = np.zeros(count)
        self.v_b = np.zeros(count)
        self.step = 0

    def run(
        self,
        z: FloatArray,
        t: FloatArray,
        zv: FloatArray,
        tv: FloatArray,
        rng: np.random.Generator,
    ) -> _Outcome:
        hp = self.hp
        n = z.shape[0]
        batch = min(hp.mini_batch_size, n)
        batches = -(-n // batch)
        planned = hp.epochs * batches
        # Geometric decay over the planned updates, so the last epochs take small steps
        # around the optimum instead of bouncing (absolute loss gradients never shrink).
        final = max(LEARNING_RATE_DECAY, SLOWEST_DECAY_PER_UPDATE ** (planned - 1))
        decay = final ** (np.arange(planned) / max(planned - 1, 1))
        count = len(self.rates)
        best_loss = np.full(count, np.inf)
        best_weights = np.zeros_like(self.weights)
        best_biases = np.zeros_like(self.biases)
        best_epochs = np.zeros(count, dtype=np.int64)
        epoch_losses: list[float] = []
        best_seen = math.inf
        waited = 0
        stopped_early = False
        epoch = 0
        with np.errstate(over="ignore", invalid="ignore"):
            for epoch in range(1, hp.epochs + 1):
                order = rng.permutation(n)
                zp, tp = z[order], t[order]
                sum_w = np.zeros_like(self.weights)
                sum_b = np.zeros_like(self.biases)
                for start in range(0, n, batch):
                    self._update(zp[start : start + batch], tp[start : start + batch], decay)
                    sum_w += self.weights
                    sum_b += self.biases
                # Iterate averaging: the mean of the epoch's iterates is less noisy
                # than the last one.
                avg_w = sum_w / batches
                avg_b = sum_b / batches
                losses = self._losses(zv, tv, avg_w, avg_b)
                improved = losses < best_loss
                best_loss[improved] = losses[improved]
                best_weights[improved] = avg_w[improved]
                best_biases[improved] = avg_b[improved]
                best_epochs[improved] = epoch
                self._drop_diverged(losses)
                epoch_loss = float(losses.min())
                epoch_losses.append(epoch_loss)
                # Linear Learner's rule: an improvement smaller than the tolerance,
                # relative to the best loss so far, counts as none.
                if best_seen - epoch_loss > hp.early_stopping_tolerance * abs(best_seen) or (
                    math.isinf(best_seen) and math.isfinite(epoch_loss)
                ):
                    best_seen = epoch_loss
                    waited = 0
                else:
                    waited += 1
                    if waited >= hp.early_stopping_patience and epoch < hp.epochs:
                        stopped_early = True
                        break
        if not np.isfinite(best_loss).any():
            raise DataError(
                "training diverged for every candidate model; set a smaller learning_rate "
                "or normalize_data=true"
            )
        winner = int(np.argmin(best_loss))
        return _Outcome(
            weights=best_weights,
            biases=best_biases,
            winner=winner,
            best_epoch=int(best_epochs[winner]),
            epochs_run=epoch,
            updates=self.step,
            stopped_early=stopped_early,
            epoch_losses=tuple(epoch_losses),
        )

    def _update(self, zb: FloatArray, tb: FloatArray, decay: FloatArray) -> None:
        hp = self.hp
        # One product for every candidate: residuals are (batch, num_models).
        residual = zb @ self.weights.T
        if hp.use_bias:
            residual += self.biases
        residual -= tb[:, None]
        if hp.loss == "absolute_loss":
            grad_out = np.sign(residual)
        elif hp.loss == "huber_loss":
            grad_out = np.clip(residual, -hp.huber_delta, hp.huber_delta)
        else:
            # The gradient of r**2 / 2: squared loss is Huber loss with an infinite delta.
            grad_out = residual
        size = zb.shape[0]
        grad_w = grad_out.T @ zb
        grad_w /= size
        if self.use_wd:
            grad_w += self.wd * self.weights
        rate = self.rates * decay[min(self.step, len(decay) - 1)]
        self.step += 1
        if hp.optimizer == "adam":
            b1, b2 = ADAM_BETA1, ADAM_BETA2
            correction = math.sqrt(1.0 - b2**self.step) / (1.0 - b1**self.step)
            self.m_w *= b1
            self.m_w += (1.0 - b1) * grad_w
            self.v_w *= b2
            self.v_w += (1.0 - b2) * grad_w * grad_w
            # Per-weight step size, also the proximal L1 threshold's scale.
            step_w = (rate * correction)[:, None] / (np.sqrt(self.v_w) + ADAM_EPSILON)
            self.weights -= step_w * self.m_w
            if hp.use_bias:
                grad_b = grad_out.sum(axis=0) / size
                self.m_b *= b1
                self.m_b += (1.0 - b1) * grad_b
                self.v_b *= b2
                self.v_b += (1.0 - b2) * grad_b * grad_b
                self.biases -= rate * correction * self.m_b / (np.sqrt(self.v_b) + ADAM_EPSILON)
        else:
            step_w = np.broadcast_to(rate[:, None], self.weights.shape)
            self.weights -= step_w * grad_w
            if hp.use_bias:
                self.biases -= rate * (grad_out.sum(axis=0) / size)
        if self.use_l1:
            shrunk = np.abs(self.weights) - step_w * self.l1
            self.weights = np.copysign(np.maximum(shrunk, 0.0), self.weights)

    def _losses(self, z: FloatArray, t: FloatArray, w: FloatArray, b: FloatArray) -> FloatArray:
        residual = z @ w.T
        if self.hp.use_bias:
            residual += b
        residual -= t[:, None]
        loss = self.hp.loss
        if loss == "absolute_loss":
            values = np.abs(residual)
        elif loss == "huber_loss":
            values = _huber(np.abs(residual), self.hp.huber_delta)
        else:
            values = residual * residual
        losses: FloatArray = values.mean(axis=0)
        return np.where(np.isfinite(losses), losses, np.inf)

    def _drop_diverged(self, losses: FloatArray) -> None:
        # A diverged candidate would only spread inf/NaN warnings: freeze it at zero.
        diverged = ~np.isfinite(losses) | ~np.isfinite(self.weights).all(axis=1)
        if diverged.any():
            self.rates[diverged] = 0.0
            for state in (self.weights, self.m_w, self.v_w):
                state[diverged] = 0.0
            for vector in (self.biases, self.m_b, self.v_b):
                vector[diverged] = 0.0
