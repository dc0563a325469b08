"""The ``citymodels`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from citymodels_devkit.paths import WORK_DIR


def _gen_data(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from citymodels_devkit.datagen import write_dataset

    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("generating cities", total=args.cities)
        summary = write_dataset(
            args.out,
            args.cities,
            args.rows,
            seed=args.seed,
            noise=args.noise,
            header=args.header,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    console.print(
        f"wrote {len(summary.cities)} cities x {summary.rows} rows "
        f"({summary.total_bytes / 1e6:.1f} MB) to {summary.out_dir}/ "
        f"and the ground truth to {summary.ground_truth_path}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from citymodels_devkit.demo import run_demo

    return run_demo(
        args.work_dir, cities=args.cities, rows=args.rows, seed=args.seed, noise=args.noise
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``citymodels`` command."""
    parser = argparse.ArgumentParser(
        prog="citymodels",
        description="One house-price model per city on a SageMaker multi-model endpoint.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser(
        "gen-data",
        help="generate synthetic house data, one raw CSV per city",
        description=(
            "Write one raw CSV per city (the notebook's headerless 9-column format; the "
            "notebook's 10 city names first) and ground_truth.json with each city's true "
            "price formula and noise, so errors can be compared with the best achievable."
        ),
    )
    gen.add_argument("--cities", type=int, default=10, help="number of cities (default 10)")
    gen.add_argument("--rows", type=int, default=1000, help="rows per city (default 1000)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument(
        "--noise", type=float, default=10_000.0, help="price noise sigma in dollars (default 10000)"
    )
    gen.add_argument(
        "--out",
        type=Path,
        default=WORK_DIR / "data",
        help="output directory (default .citymodels/data)",
    )
    gen.add_argument("--header", action="store_true", help="write a header row")
    gen.set_defaults(handler=_gen_data)

    demo = commands.add_parser(
        "demo",
        help="run the notebook's story on this machine (what `make demo` runs)",
        description=(
            "Generate cities, process each upload as the processing job does, train one "
            "Linear Learner per city, then query prices through the inference pipeline and "
            "compare the errors with the best achievable (the generator's ground truth). "
            "Writes a chart of predicted vs actual prices."
        ),
    )
    demo.add_argument("--cities", type=int, default=10, help="number of cities (default 10)")
    demo.add_argument("--rows", type=int, default=1000, help="rows per city (default 1000)")
    demo.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    demo.add_argument(
        "--noise", type=float, default=10_000.0, help="price noise sigma (default 10000)"
    )
    demo.add_argument(
        "--work-dir",
        type=Path,
        default=WORK_DIR / "demo",
        help="where data, models and charts go; emptied first (default .citymodels/demo)",
    )
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``citymodels`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        print(f"citymodels {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
