"""dp-paging before and after a change: the same schedules, or steps as fast, on many random chains.

Usage::

    python benchmarks/compare_dp_paging.py [--before a71d8bc] [--chains 40] [--out result.json]

Runs ``dp_paging`` of the revision ``--before`` (extracted with ``git archive``
into a temporary folder) and of this working tree, each in its own process,
on random chains (``planner.synthetic.random_chain``, 6 to 40 layers, times in
ms; every fifth a uniform chain, ``uniform_chain``, whose equal segments the
table solves once) with random storages (``tests/paging_setup.random_storage``), transfers
beside compute and serial, at 20%, 35%, 50%, 70% and 90% of store-all.  For
each case it records the ops, the step's time on the storage's timeline and
the peak, and reports the cases whose ops differ, split into those with the
same step time (within 1e-9 relative), a faster one, and a slower one (a
regression: exit status 1).  Also run with ``--one`` on a single revision
(internal).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.2, 0.35, 0.5, 0.7, 0.9)


def cases(n_chains):
    """``(seed, n, overlap, fraction)`` of every case."""
    for seed in range(n_chains):
        n = 6 + (seed * 7) % 35
        for overlap in (True, False):
            for frac in FRACTIONS:
                yield seed, n, overlap, frac


def run_one(n_chains):
    """Every case on the ``planner`` importable here: a JSON list on stdout."""
    import dataclasses

    from planner.errors import InfeasibleError
    from planner.lowering import insert_frees, store_all_ops
    from planner.model import model_from_dict
    from planner.simulate import simulate
    from planner.solvers.dp_paging import dp_paging
    from planner.synthetic import random_chain, uniform_chain

    def timed(model):
        doc = model.to_dict()
        doc["time_unit"] = "ms"
        return model_from_dict(doc)

    sys.path.insert(0, str(ROOT))  # tests.paging_setup of this tree: the same storages for both
    from tests.paging_setup import random_storage

    out = []
    models = {}
    for seed, n, overlap, frac in cases(n_chains):
        if seed not in models:
            m = timed(uniform_chain(n) if seed % 5 == 4 else random_chain(n, seed))
            models[seed] = (m, simulate(m, insert_frees(m, store_all_ops(m))).peak_bytes)
        model, top = models[seed]
        storage = dataclasses.replace(random_storage(seed), overlap=overlap)
        budget = int(top * frac)
        try:
            ops, _ = dp_paging(model, budget=budget, storage=storage)
        except InfeasibleError as exc:
            out.append({"case": [seed, n, overlap, frac], "least": exc.least_bytes})
            continue
        result = simulate(model, ops, storage=storage)
        out.append({"case": [seed, n, overlap, frac], "ops": [str(op) for op in ops],
                    "step": result.step_time, "peak": result.peak_bytes, "fits": result.peak_bytes <= budget})
    json.dump(out, sys.stdout)


def run_revision(path, n_chains):
    env = dict(os.environ, PYTHONPATH=str(path), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", "--chains", str(n_chains)],
                          cwd=path, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="a71d8bc", help="the revision to compare against")
    parser.add_argument("--chains", type=int, default=40, help="how many random chains")
    parser.add_argument("--out", help="write every case's step times to this JSON file")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return run_one(args.chains)
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        before = run_revision(Path(tmp), args.chains)
    after = run_revision(ROOT, args.chains)
    same = equal_step = faster = slower = 0
    rows = []
    for b, a in zip(before, after):
        assert b["case"] == a["case"]
        if "least" in b or "least" in a:
            if b.get("least") != a.get("least"):
                slower += 1
                print("least peak differs", b["case"], b.get("least"), a.get("least"))
            else:
                same += 1
            continue
        assert a["fits"], a["case"]
        rows.append({"case": a["case"], "before": b["step"], "after": a["step"]})
        if a["ops"] == b["ops"]:
            same += 1
        elif abs(a["step"] - b["step"]) <= 1e-9 * abs(b["step"]):
            equal_step += 1
        elif a["step"] < b["step"]:
            faster += 1
        else:
            slower += 1
            print("slower", a["case"], b["step"], a["step"])
    print(f"{len(before)} cases against {args.before}: {same} the same schedule, {equal_step} another schedule "
          f"of the same step time, {faster} faster, {slower} slower")
    if args.out:
        Path(args.out).write_text(json.dumps(rows))
    return 1 if slower else 0


if __name__ == "__main__":
    sys.exit(main())
