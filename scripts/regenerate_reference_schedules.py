#!/usr/bin/env python3
"""Regenerate the reference schedules in schedules/reference/ (or check them).

Each reference schedule is exactly what ``edgeplan solve MODEL --memory SIZE
-o FILE`` writes for one example model (strategy ``auto``: the least compute
among all strategies).  CI runs ``--check``: it solves again and compares byte
for byte, so a change in any solver, the simulator or the file format shows
up as a diff to review, not as a silent change of the schedules users get.

Usage::

    python scripts/regenerate_reference_schedules.py           # rewrite the files
    python scripts/regenerate_reference_schedules.py --check   # exit 1 if any differs

Run it (without --check) after changing a solver, and commit the result.
"""

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner import solvers  # noqa: E402
from planner.budget import split_memory  # noqa: E402
from planner.model import load_model  # noqa: E402
from planner.sizes import parse_size  # noqa: E402

#: (model file under examples/, --memory): one generous and one tight budget per model.
CASES = [
    ("resnet18.json", "256MB"),
    ("resnet18.json", "200MB"),
    ("mobilenet_v2.json", "400MB"),
    ("mobilenet_v2.json", "250MB"),
    ("vgg16_bn.json", "30MB"),
]
REFERENCE_DIR = ROOT / "schedules" / "reference"


def reference_name(model_file, memory):
    """``resnet18.json``, ``256MB`` -> ``resnet18-256MB.json``."""
    return f"{pathlib.Path(model_file).stem}-{memory}.json"


def regenerate(out_dir, *, cases=CASES):
    """Solve every case and write its schedule into ``out_dir``; return the paths."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for model_file, memory in cases:
        model = load_model(ROOT / "examples" / model_file)
        budget = split_memory(model, parse_size(memory), "sgd")
        solution = solvers.solve(model, budget.activation_bytes, "auto")
        path = out_dir / reference_name(model_file, memory)
        solution.schedule.write(path, model)
        written.append(path)
    return written


def differences(reference_dir=REFERENCE_DIR, *, cases=CASES):
    """Names of the reference files that are missing or differ from a fresh solve."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = regenerate(tmp, cases=cases)
        changed = []
        for path in fresh:
            committed = pathlib.Path(reference_dir) / path.name
            if not committed.exists() or committed.read_bytes() != path.read_bytes():
                changed.append(path.name)
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    if args.check:
        changed = differences()
        for name in changed:
            print(f"differs: schedules/reference/{name}", file=sys.stderr)
        if changed:
            print("run scripts/regenerate_reference_schedules.py and review the diff", file=sys.stderr)
            return 1
        print(f"{len(CASES)} reference schedules match")
        return 0
    for path in regenerate(REFERENCE_DIR):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
