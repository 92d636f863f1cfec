"""The ``cpnn`` command line: ``demo`` (the whole pipeline on HER2ST), ``fit`` and ``predict``."""

from __future__ import annotations

import argparse
import sys
import warnings

from .._errors import CpnnError, DataFileError
from ._demo import run_demo
from ._scripted import add_parsers


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cpnn`` command."""
    parser = argparse.ArgumentParser(prog="cpnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit on HER2ST patient C, predict patient B, evaluate, draw")
    demo.add_argument("--out", default="cpnn-demo", help="output folder")
    demo.add_argument("--encoder", default="handcrafted", help="'handcrafted', 'nuclei' or a timm architecture")
    demo.add_argument("--epochs", type=int, default=None, help="epoch cap (default: the preset's)")
    demo.add_argument("--n-genes", type=int, default=250)
    demo.add_argument("--seed", type=int, default=0, help="first seed")
    demo.add_argument("--seeds", type=int, default=3, help="seeds to train; the headline is their mean +- sd")
    demo.add_argument("--force", action="store_true", help="overwrite the outputs of an earlier demo in --out")
    demo.set_defaults(run=run_demo)
    add_parsers(sub)
    args = parser.parse_args(argv)
    if not sys.warnoptions:  # dependencies' warnings are for their developers; python -W shows them again
        for category in (UserWarning, FutureWarning, DeprecationWarning, PendingDeprecationWarning, SyntaxWarning):
            warnings.filterwarnings("ignore", category=category)
    try:
        return args.run(args)
    except (CpnnError, DataFileError) as err:  # a user's mistake or a bad file: the message, not a traceback
        parser.exit(2, f"cpnn {args.command}: error: {err}\n")
    except KeyboardInterrupt:  # Ctrl-C outside training (loading, predicting, writing): said, and a failing status
        print(f"cpnn {args.command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["main"]
