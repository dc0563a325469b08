"""The SageMaker training-container contract, for the local Linear Learner.

A SageMaker training container finds everything under one root (``/opt/ml``)::

    input/config/hyperparameters.json   {"name": "string value", ...}
    input/config/inputdataconfig.json   {"train": {"ContentType": "text/csv", ...}, ...}
    input/data/<channel>/...            the channel's files
    model/                              written: model.tar.gz (SageMaker uploads it)
    output/failure                      written on failure: the job's FailureReason
    output/metrics.json                 written: final metrics, FinalMetricDataList shape

Metrics are also printed to stdout the way Linear Learner logs them, so the regular
expressions of its metric definitions find them in the log::

    #quality_metric: host=algo-1, validation absolute_loss <loss>=4012.5

Run it as ``python -m citymodels_devkit.linear_learner.container --ml-root DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from .hyperparameters import HyperparameterError
from .training import CHANNELS, DataError, TrainingResult, train

__all__ = ["main", "run_training"]

HOST: Final = "algo-1"
_CSV_CONTENT_TYPES: Final = ("text/csv", "text/csv;label_size=1")


class ChannelConfigError(ValueError):
    """``inputdataconfig.json`` asks for something the local Linear Learner cannot read."""


def run_training(ml_root: Path, *, seed: int = 0) -> int:
    """Run one training job following the SageMaker container contract.

    Parameters
    ----------
    ml_root
        The container root (``/opt/ml`` in SageMaker).
    seed
        Seeds training (the scaler sample and mini-batch order).

    Returns
    -------
    int
        0 on success; 1 when the job's input is at fault (the reason, prefixed
        ``ClientError:``, is in ``output/failure``); 2 on an internal error
        (``AlgorithmError:``).
    """
    ml_root = Path(ml_root)
    output_dir = ml_root / "output"
    try:
        config_dir = ml_root / "input" / "config"
        hyperparameters = _read_json_object(config_dir / "hyperparameters.json", missing_ok=True)
        channel_config = _read_json_object(config_dir / "inputdataconfig.json", missing_ok=False)
        channels = _channels(channel_config, ml_root / "input" / "data")
        started = time.time()
        result = train(channels, hyperparameters, ml_root / "model", seed=seed)
        _report(result, started, output_dir)
    except (HyperparameterError, DataError, ChannelConfigError) as error:
        return _fail(output_dir, f"ClientError: {error}", 1)
    except Exception as error:  # every failure, whatever it is, must reach output/failure
        traceback.print_exc()
        return _fail(output_dir, f"AlgorithmError: {type(error).__name__}: {error}", 2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see ``--help``.

    Parameters
    ----------
    argv
        Arguments (without the program name); ``None`` for ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status of :func:`run_training`.
    """
    parser = argparse.ArgumentParser(
        prog="python -m citymodels_devkit.linear_learner.container",
        description=(
            "Run a local Linear Learner (regressor) training job with SageMaker's "
            "training-container layout: reads input/config/hyperparameters.json, "
            "input/config/inputdataconfig.json and input/data/<channel>/ (text/csv, "
            "label first), writes model/model.tar.gz and output/metrics.json, or "
            "output/failure with the reason."
        ),
        epilog="Exit status: 0 success, 1 bad input (ClientError), 2 internal error.",
    )
    parser.add_argument(
        "--ml-root",
        type=Path,
        default=Path("/opt/ml"),
        help="the container root holding input/, model/ and output/ (default: /opt/ml)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the scaler sample and batch order"
    )
    args = parser.parse_args(argv)
    return run_training(args.ml_root, seed=args.seed)


def _read_json_object(path: Path, *, missing_ok: bool) -> dict[str, Any]:
    if missing_ok and not path.exists():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChannelConfigError(f"{path.name} is missing from {path.parent}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ChannelConfigError(f"{path.name} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ChannelConfigError(f"{path.name} must hold a JSON object")
    return document


def _channels(config: dict[str, Any], data_dir: Path) -> dict[str, Path]:
    channels: dict[str, Path] = {}
    for name, settings in config.items():
        if name not in CHANNELS:
            raise ChannelConfigError(
                f"channel {name!r}: Linear Learner reads only the train, validation and "
                "test channels"
            )
        settings = settings if isinstance(settings, dict) else {}
        content_type = settings.get("ContentType")
        normalised = "".join(str(content_type).split()).lower()
        if content_type is None:
            raise ChannelConfigError(
                f"channel {name!r} has no ContentType; Linear Learner then expects "
                "application/x-recordio-protobuf, which the local Linear Learner does not "
                "read: set ContentType to text/csv;label_size=1"
            )
        if normalised not in _CSV_CONTENT_TYPES:
            raise ChannelConfigError(
                f"channel {name!r} has ContentType {content_type!r}; the local Linear "
                "Learner reads only text/csv (label_size=1: the label in the first column)"
            )
        mode = settings.get("TrainingInputMode", "File")
        if mode != "File":
            raise ChannelConfigError(
                f"channel {name!r} uses TrainingInputMode {mode!r}; the local Linear "
                "Learner reads File mode only"
            )
        channels[name] = data_dir / name
    return channels


def _report(result: TrainingResult, started: float, output_dir: Path) -> None:
    info = result.info
    for epoch, loss in enumerate(info.epoch_losses, start=1):
        print(
            f"[epoch {epoch}] best {info.selection_channel} objective (standardised units): "
            f"{loss:.6g}"
        )
    best = info.best_candidate
    print(
        f"epochs run: {info.epochs_run}{' (early stopping)' if info.stopped_early else ''}; "
        f"best model #{best.index} (learning_rate={best.learning_rate:.4g}, wd={best.wd:g}, "
        f"l1={best.l1:g}) from epoch {info.best_epoch}"
    )
    for name, value in result.metrics.items():
        channel, metric = name.split(":", 1)
        kind = "score" if metric == "r2" else "loss"
        print(f"#quality_metric: host={HOST}, {channel} {metric} <{kind}>={value!r}")
    ended = time.time()
    summary = {
        "StartTime": started,
        "EndTime": ended,
        "Dimensions": {"Algorithm": "Linear Learner", "Host": HOST, "Operation": "training"},
        "Metrics": {
            name: {"sum": value, "count": 1, "min": value, "max": value}
            for name, value in result.metrics.items()
        },
    }
    print(f"#metrics {json.dumps(summary)}", flush=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = [{"MetricName": name, "Value": value} for name, value in result.metrics.items()]
    (output_dir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")


def _fail(output_dir: Path, reason: str, status: int) -> int:
    print(reason, file=sys.stderr, flush=True)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "failure").write_text(reason + "\n")
    except OSError as error:  # the status still tells SageMaker the job failed
        print(f"could not write {output_dir / 'failure'}: {error}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
