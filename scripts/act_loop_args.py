"""The command line of the scripts that time `Policy.act` on one artifact in a control loop."""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_act_loop_args(doc: str, acts_help: str, min_acts: int = 1) -> argparse.Namespace:
    """ARTIFACT [--acts N] [--frames N] [--threads N], each count checked."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--acts", type=int, default=600, help=acts_help)
    parser.add_argument("--frames", type=int, default=60, help="control-loop frames, cycled")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.acts < min_acts or args.frames < 1 or args.threads < 1:
        parser.error(f"--acts must be >= {min_acts}, --frames and --threads >= 1")
    return args
