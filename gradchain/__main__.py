"""Command line: `python -m gradchain demo` trains a small MLP with three gradchain optimizers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gradchain import _demo


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _png_path(text: str) -> Path:
    # Checked while parsing, so a typo fails now rather than after the training.
    path = Path(text)
    if not path.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"the directory {path.resolve().parent} does not exist")
    return path


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m gradchain`."""
    parser = argparse.ArgumentParser(
        prog="python -m gradchain",
        description="gradchain: composable gradient transformations for JAX.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train a small MLP with SGD+momentum, Adam and AdamW, and compare them",
        description=(
            "Train a 2-32-32-2 MLP on a synthetic two-class data set with three gradchain optimizers "
            "(SGD with momentum, Adam, AdamW with a warmup-cosine learning rate), print a results table "
            "and, if matplotlib is installed, plot the loss curves. The source, gradchain/_demo.py, is "
            "a plain JAX training loop meant to be read."
        ),
    )
    demo.add_argument(
        "--steps",
        type=_int_at_least(1),
        default=_demo.DEFAULT_STEPS,
        help=f"training steps per optimizer (default: {_demo.DEFAULT_STEPS})",
    )
    demo.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=_demo.DEFAULT_SEED,
        help=f"seed for the data, the initial params and the batch order (default: {_demo.DEFAULT_SEED})",
    )
    demo.add_argument(
        "--dataset", choices=_demo.DATASETS, default="moons", help="the synthetic data set (default: moons)"
    )
    demo.add_argument(
        "--out",
        type=_png_path,
        default=Path(_demo.DEFAULT_OUT),
        help=f"PNG file for the loss curves (default: {_demo.DEFAULT_OUT} in the current directory)",
    )
    demo.add_argument("--no-plot", action="store_true", help="do not plot the loss curves")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with the arguments `argv` (default: `sys.argv[1:]`); return the exit code.

    Invalid arguments exit with status 2 through argparse (`SystemExit`), like any argparse program.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    out = None if args.no_plot else args.out
    _demo.run_demo(steps=args.steps, seed=args.seed, dataset=args.dataset, out=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
