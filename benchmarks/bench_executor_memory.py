"""Measured peak of a real training step under the executor, against the prediction, for every strategy.

Chains and DAGs from ``tests/models_torch.py`` and ``tests/models_train.py``,
profiled by ``edgeplan profile`` here; every applicable strategy at two
budgets (60% and 80% of store-all; store-all itself with none).  Each
schedule runs one training step through
:class:`planner.torch.executor.ScheduledModule` (``edgeplan verify``), whose
allocator peak is compared with the simulator's ``peak_bytes``; the gradients
are compared with plain autograd.  The table goes into docs/fidelity.md.

Run: ``python benchmarks/bench_executor_memory.py [--quick] [--no-write]``.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._docs import markdown_table, write_section  # noqa: E402
from planner import solvers  # noqa: E402
from planner.errors import InfeasibleError, NotApplicableError  # noqa: E402
from planner.torch.profile import profile_model  # noqa: E402
from planner.model import model_from_dict  # noqa: E402

DOC = os.path.join(ROOT, "docs", "fidelity.md")
HEADING = "## 5. The executor's peaks, every strategy (CPU)"


def _cases(quick):
    from tests.models_torch import deeper_cnn, resnet_chain, skip_net
    from tests.models_train import ResNetDAG, bn_dropout_chain, fork_net, resnet_dag

    cases = [
        ("deeper_cnn (chain)", deeper_cnn, (4, 3, 16, 16), "auto"),
        ("bn_dropout_chain (chain)", bn_dropout_chain, (4, 3, 8, 8), "auto"),
        ("resnet_dag (DAG)", resnet_dag, (4, 3, 16, 16), "ops"),
    ]
    if not quick:
        cases += [
            ("resnet_dag 5 blocks, width 16 (DAG)", lambda: ResNetDAG(5, width=16), (8, 3, 32, 32), "ops"),
            ("resnet18-shaped, fx ops (DAG)", resnet_chain, (4, 3, 64, 64), "ops"),
            ("skip_net (DAG)", skip_net, (2, 3, 8, 8), "ops"),
            ("fork_net (DAG)", fork_net, (4, 3, 32, 32), "ops"),
        ]
    return cases


def run(quick):
    from planner.torch.verify import verify

    rows = []
    for label, factory, shape, stages in _cases(quick):
        model = model_from_dict(profile_model(factory(), shape, repeats=1, stages=stages, name=label))
        full = solvers.solve(model, None, "store-all").result.peak_bytes
        for strategy in solvers.applicable(model):
            if strategy == "auto":
                continue
            for fraction in (None,) if strategy == "store-all" else (0.6, 0.8):
                options = {"time_limit": 10} if strategy == "milp" else {}
                try:
                    sol = solvers.solve(model, None if fraction is None else int(full * fraction), strategy, **options)
                except (InfeasibleError, NotApplicableError):
                    continue
                r = verify(factory(), shape, sol.ops, stages=stages, model=model,
                           predicted=sol.result.peak_bytes, budget=sol.schedule.budget_bytes)
                rows.append((label, len(model), fraction, strategy, sol.result.peak_bytes, r))
                print(f"{label}: {strategy} {fraction}: {r.relative_error:+.2%}", file=sys.stderr, flush=True)
    return rows


def table(rows):
    header = ["model", "layers", "budget", "strategy", "predicted", "measured", "error", "plain autograd", "grads"]
    body = []
    for label, n, fraction, strategy, predicted, r in rows:
        budget = "none" if fraction is None else f"{fraction:.0%} of store-all"
        grads = "exact" if r.max_abs_diff == 0 else f"{r.max_abs_diff:.1e}"
        body.append([label, n, budget, strategy, f"{predicted:,}", f"{r.measured_peak_bytes:,}",
                     f"{r.relative_error:+.2%}", f"{r.reference_peak_bytes:,}", grads])
    return markdown_table(header, body)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three models (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/fidelity.md")
    args = parser.parse_args(argv)
    import torch

    rows = run(args.quick)
    text = table(rows)
    print(text)
    errors = [r.relative_error for *_, r in rows]
    within = sum(abs(e) <= 0.02 for e in errors)
    summary = (f"|error| over {len(rows)} schedules: median {statistics.median(map(abs, errors)):.2%}; "
               f"measured above predicted by at most {max(max(errors), 0):+.2%}, below by at most "
               f"{min(min(errors), 0):+.2%}; {within} of {len(rows)} within 2%. Gradients match plain "
               f"autograd in {sum(r.grads_match for *_, r in rows)} of {len(rows)}.")
    outside = [f"{label} {strategy} ({r.relative_error:+.2%})" for label, _, _, strategy, _, r in rows
               if abs(r.relative_error) > 0.02]
    if outside:
        summary += f" Outside 2%: {', '.join(outside)}; see section 4.1."
    print(summary)
    if not args.no_write and not args.quick:
        body = (
            f"`python benchmarks/bench_executor_memory.py` ({datetime.date.today().isoformat()}, torch "
            f"{torch.__version__}, {platform.machine()} CPU). One training step per schedule under the "
            "executor; measured is the allocator peak above what was allocated before the step, plus the "
            "input (as `peak_bytes` counts it). Models from `tests/models_torch.py` and "
            "`tests/models_train.py`, profiled here.\n\n" + text + "\n\n" + summary + "\n"
        )
        write_section(HEADING, body, path=DOC)
    return 0


if __name__ == "__main__":
    sys.exit(main())
