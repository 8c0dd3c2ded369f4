"""Schema validation: fastjsonschema (what the loaders use) against jsonschema, on long models.

For models of 1,000 to 20,000 layers (every field spelled out, as
``Model.to_dict`` writes them) it times, in the same run, one validation with
the compiled fastjsonschema validator (:func:`planner.schemas.validator`), one
with ``jsonschema.Draft202012Validator``, and a whole
:func:`planner.model.model_from_dict` (schema, then building and its checks).

Usage::

    python benchmarks/bench_schema.py            # print the table
    python benchmarks/bench_schema.py --write    # also replace its section of docs/benchmarks.md
"""

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _docs import stamp, write_section  # noqa: E402  (benchmarks/ is on sys.path)

from planner.model import model_from_dict  # noqa: E402
from planner.schemas import load_schema, validator  # noqa: E402
from planner.synthetic import random_chain  # noqa: E402

SECTION = "## Schema validation (benchmarks/bench_schema.py)"
SCHEMA = "model.schema.json"


def _best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def run(sizes, repeats):
    """One table row per size: seconds for fastjsonschema, jsonschema, model_from_dict."""
    import jsonschema

    reference = jsonschema.Draft202012Validator(load_schema(SCHEMA))
    fast_validate = validator(SCHEMA)  # compiled once per process, outside the timings
    rows = []
    for n in sizes:
        document = random_chain(n, 0).to_dict()
        fast = _best_of(lambda: fast_validate(document), repeats)
        slow = _best_of(lambda: reference.validate(document), 1)
        load = _best_of(lambda: model_from_dict(document), repeats)
        rows.append(
            f"| {n:,} | {fast:.3f} | {slow:.2f} | x{slow / fast:,.0f} | {load:.3f} | {fast / load:.0%} |"
        )
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the section of docs/benchmarks.md")
    args = parser.parse_args()
    header = [
        "| layers | fastjsonschema (s) | jsonschema (s) | ratio | model_from_dict (s) | schema share |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(header), flush=True)
    rows = run([1_000, 5_000, 20_000], repeats=3)
    when = stamp()
    text = (
        f"Date: {when}. Machine: {platform.machine()}, Python {platform.python_version()}, a shared "
        "2-core box: read the ratios within a row.\n\n"
        "One validation of a model document against `model.schema.json` with the compiled "
        "fastjsonschema validator the loaders use, and with `jsonschema` (the tests' reference); "
        "`model_from_dict` is the whole load from a parsed document (schema, then building and its "
        "checks). Best of 3 (jsonschema: one run).\n\n" + "\n".join(header + rows)
    )
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
