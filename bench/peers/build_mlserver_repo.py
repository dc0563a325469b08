"""Build an MLServer multi-model repository of scikit-learn linear models.

Runs in the peer's virtualenv (``.venv-bench``), never in the project's: the models
are fitted and saved by the same scikit-learn that MLServer loads them with.

Input: an ``.npz`` file with ``names`` (M model names), ``x`` (M × rows × 10: the
encoded features the Linear Learner is trained on) and ``y`` (M × rows: prices).
Output, under ``REPO``::

    settings.json                 the server: host, ports (MLServer's other defaults,
                                  unless --parallel-workers is given)
    {name}/model.joblib           LinearRegression fitted on x[i], y[i]
    {name}/model-settings.json    {"name", "implementation": mlserver_sklearn.SKLearnModel,
                                   "parameters": {"uri": "./model.joblib"}}

Prints one JSON object: the versions used and model 0's prediction for ``--check-row``.

Run: ``.venv-bench/bin/python bench/peers/build_mlserver_repo.py DATA.npz REPO
--http-port P --grpc-port G --metrics-port M``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help=".npz with names, x, y")
    parser.add_argument("repo", type=Path, help="the model repository to write")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument(
        "--parallel-workers", type=int, default=None, help="MLServer's (default: its own)"
    )
    parser.add_argument(
        "--check-row", default="", help="comma-separated encoded features to predict with"
    )
    args = parser.parse_args()

    import joblib
    import mlserver
    import numpy as np
    import sklearn
    from sklearn.linear_model import LinearRegression

    data = np.load(args.data, allow_pickle=False)
    names = [str(n) for n in data["names"]]
    x, y = data["x"], data["y"]
    args.repo.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {
        "debug": False,
        "host": args.host,
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port,
        "load_models_at_startup": True,
    }
    if args.parallel_workers is not None:
        settings["parallel_workers"] = args.parallel_workers
    (args.repo / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    check = None
    for index, name in enumerate(names):
        model = LinearRegression().fit(x[index], y[index])
        directory = args.repo / name
        directory.mkdir(exist_ok=True)
        joblib.dump(model, directory / "model.joblib")
        model_settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib"},
        }
        (directory / "model-settings.json").write_text(json.dumps(model_settings, indent=2) + "\n")
        if index == 0 and args.check_row:
            row = np.array([[float(v) for v in args.check_row.split(",")]])
            check = float(model.predict(row)[0])
    json.dump(
        {
            "models": len(names),
            "mlserver": mlserver.__version__,
            "scikit_learn": sklearn.__version__,
            "python": sys.version.split()[0],
            "model_0_prediction": check,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
