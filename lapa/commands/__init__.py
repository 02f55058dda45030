"""The ``lapa`` command: one subcommand per pipeline stage.

Every subcommand takes its inputs and outputs as explicit paths plus the experiment config
(``--config NAME_OR_YAML`` and trailing ``key=value`` overrides), so a Snakemake rule is one
command line. This package sits on top of every stage: ``lapa/commands/<stage>.py`` builds the
parser of that stage's subcommands and calls into the stage; no stage imports this package.
Heavy imports (torch, simulator) stay inside the run functions so ``lapa --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = [
    "lapa.commands.sim",
    "lapa.commands.data",
    "lapa.commands.laq",
    "lapa.commands.foundation",
    "lapa.commands.stats",
    "lapa.commands.finetune",
    "lapa.commands.policy",
    "lapa.commands.evaluation",
    "lapa.commands.results",
    "lapa.commands.workflow",
]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment config options every stage command shares."""
    parser.add_argument(
        "-c",
        "--config",
        default="default",
        help="experiment name from configs/experiment/ or a path to an experiment YAML (default: default)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. laq.quantizer.vocab_size=16",
    )


def load_config_from_args(args: argparse.Namespace):
    from lapa.config import load_config

    return load_config(args.config, list(args.overrides or []))


def add_workdir_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--workdir`` of a resumable training command (``lapa.utils.run``); ``default`` says in words
    where the stage puts it when the option is left out."""
    parser.add_argument(
        "--workdir",
        default=None,
        help=f"checkpoints and logs, one folder per run identity (default: {default})",
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``, read back by ``device_from_args``."""
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )


def device_from_args(args: argparse.Namespace) -> str:
    """``--device`` when given, else ``cuda`` when torch sees a GPU, else ``cpu`` (imports torch)."""
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def error_message(exc: BaseException) -> str:
    """The text ``lapa`` prints for an error. An error raised in a DataLoader worker reaches the
    main process re-raised by torch with the worker's whole traceback as its message ("Caught X in
    DataLoader worker process N. Original Traceback ..."); that becomes the original message and
    where it was raised. Any other error's message is returned as it is."""
    text = str(exc)
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    head, found, message = text.rpartition(f"\n{name}: ")
    if not found:
        return text
    where = head.split("\n", 1)[0].partition(" in ")[2].rstrip(".")
    return f"{message.strip()} (in {where})" if where else message.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lapa",
        description=(
            "LAPA: latent action pretraining from videos. Stages: rollouts/shards (data), "
            "train-laq and label (latent actions), train-foundation (VLA pretraining), action-stats "
            "and finetune (robot actions), eval-offline / eval-sim / serve / export (the policy)."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    from lapa.config import ConfigError

    try:
        result = args.func(args)
    except ConfigError as exc:
        print(f"lapa {args.command}: config error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, FileExistsError, IsADirectoryError, ValueError) as exc:
        text = str(exc) if args.verbose else error_message(exc)  # -v keeps a worker's traceback
        print(f"lapa {args.command}: error: {text}", file=sys.stderr)
        sys.exit(1)
    if isinstance(result, int):
        sys.exit(result)


if __name__ == "__main__":
    main()
