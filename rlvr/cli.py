"""``rlvr train RECIPE [key=value ...] [--resume]``, ``rlvr eval --model M --benchmarks B --output DIR``,
``rlvr prepare STAGE RECIPE`` and ``rlvr list algorithms|rewards|benchmarks|templates|engines|learners``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rlvr.config import RecipeError, load_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlvr", description="RL post-training with verifiable rewards.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a recipe")
    train.add_argument("recipe", help="a recipe YAML, e.g. recipes/tiny/grpo.yaml")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. learner.lr=2e-6")
    train.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint, with the "
                       "recipe it was trained with (anywhere on the command line)")
    train.add_argument("--allow-recipe-change", action="store_true", help="with --resume: go on although the recipe "
                       "changes what is trained (both recipes are kept in the run directory)")

    prepare = commands.add_parser("prepare", help="run an offline stage before training (astar: A*-PO's V* table)")
    prepare.add_argument("stage", help="the stage: astar")
    prepare.add_argument("recipe", help="the recipe the stage prepares, e.g. recipes/tiny/astar.yaml")
    prepare.add_argument("overrides", nargs="*", help="section.key=value overrides")

    evaluation = commands.add_parser("eval", help="evaluate a model on math benchmarks (AIME, MATH500, AMC, GSM8K)")
    add_eval_arguments(evaluation)

    listing = commands.add_parser("list", help="list what is registered")
    listing.add_argument("what", choices=["algorithms", "rewards", "benchmarks", "templates", "engines",
                                                 "learners"])

    # Overrides may follow the flags too (`rlvr train r.yaml --resume trainer.total_steps=8`): argparse's positional
    # list ends at the first flag, so the rest come back unparsed and join it here.
    args, rest = parser.parse_known_args(argv)
    if rest and getattr(args, "overrides", None) is not None and all("=" in x and not x.startswith("-") for x in rest):
        args.overrides += rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "list":
        return _list(args.what)
    if args.command == "eval":
        from rlvr.eval.command import run

        return run(args)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as error:
        print(f"rlvr: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rlvr.runlock import RunDirUnwritable, RunInUse, RunLock

    try:
        if args.command == "train":
            RunLock(Path(recipe.trainer.output_dir)).check()  # a live run's directory: say so before the imports
    except RunInUse as error:
        print(f"rlvr: {error}", file=sys.stderr)
        return 2
    from rlvr.checkpoint import CheckpointError
    from rlvr.guards import RunStopped
    from rlvr.trainer import train as run_training

    try:
        if args.command == "prepare":
            from rlvr.prepare import prepare

            prepare(args.stage, recipe)
        else:
            run_training(recipe, resume=args.resume, allow_recipe_change=args.allow_recipe_change)
    except (FileExistsError, ValueError, RunDirUnwritable) as error:
        print(f"rlvr: {error}", file=sys.stderr)
        return 2
    except RunStopped as error:
        print(f"rlvr: {error}", file=sys.stderr)
        return error.exit_code
    except CheckpointError as error:
        print(f"rlvr: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the run's steps began
        from rlvr import checkpoint

        last = checkpoint.latest(Path(recipe.trainer.output_dir))
        print(f"rlvr: stopped at once; {f'the last checkpoint is {last}' if last else 'no checkpoint was written'}",
              file=sys.stderr)
        return 130
    return 0


# An engine that runs alone may take most of its GPU (a training run's colocated engine shares it: 0.5).
EVAL_DEFAULTS = {"gpu_memory_utilization": 0.9}


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """``rlvr eval``'s arguments: its own (:func:`rlvr.eval.command.add_arguments`) and one flag per engine
    option (:attr:`rlvr.rollout.registry.EngineSpec.options`), named, typed and described as the recipe's
    ``rollout`` field of that name."""
    from rlvr.eval.command import add_arguments

    add_arguments(parser)
    _add_engine_options(parser)


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    """One flag per engine option (:attr:`rlvr.rollout.registry.EngineSpec.options`), named, typed and described as
    the recipe's ``rollout`` field of that name."""
    from rlvr.config import RolloutConfig
    from rlvr.rollout import registry

    for spec in registry.ENGINES.values():
        for key in spec.options:
            field = RolloutConfig.model_fields[key]
            default = EVAL_DEFAULTS.get(key, field.default)
            described = (field.description or "").removeprefix(f"{spec.label} only. ").replace("%", "%%")
            help_text = f"{spec.name} engine: {described} (default {default})"
            flag = "--" + key.replace("_", "-")
            if field.annotation is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            else:
                kind = float if "float" in str(field.annotation) else int
                parser.add_argument(flag, type=kind, default=default, help=help_text)


def _list(what: str) -> int:
    if what == "algorithms":
        from rlvr import algos

        for name in algos.names():
            print(f"{name:20s} {algos.get(name).summary}")
    elif what == "benchmarks":
        from rlvr.eval.benchmarks import BENCHMARKS

        for name, b in BENCHMARKS.items():
            print(f"{name:20s} {b.file:20s} {b.hub} ({b.hub_split})")
    elif what in ("engines", "learners"):
        from rlvr.learner import registry as learners
        from rlvr.rollout import registry as engines

        kinds = engines.ENGINES if what == "engines" else learners.LEARNERS
        for name, kind in kinds.items():
            print(f"{name:20s} {kind.summary}")
    elif what == "templates":
        from rlvr.data.prompts import TEMPLATES

        for name, description in TEMPLATES.items():
            print(f"{name:20s} {description}")
    else:
        from rlvr.rewards.registry import REWARDS, available

        for name, description in available().items():
            print(f"{name:20s} {REWARDS[name]:40s} {description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
