"""The ``edgeplan`` command line: parse, call the planner, print.  The only place that exits.

Exit codes: 0 success; 1 a negative answer (no schedule fits, the schedule is
invalid or does not fit); 2 bad usage or a bad input file.
"""

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from planner.budget import OPTIMIZER_FACTORS, activation_budget
from planner.errors import (
    InfeasibleError,
    ModelError,
    NotApplicableError,
    ScheduleFormatError,
)
from planner.model import load_model
from planner.schedule import load_schedule
from planner.simulate import simulate
from planner.sizes import SizeError, format_size, parse_size
from planner import solvers

__all__ = ["main"]

EXIT_OK, EXIT_NO, EXIT_BAD = 0, 1, 2


class SizeType(click.ParamType):
    """SIZE: bytes, or a number with kB/MB/GB/TB or KiB/MiB/GiB/TiB."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except SizeError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()


def _consoles(as_json):
    """(data console, people console): people's text goes to stderr under --json."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    out = err if as_json else Console(highlight=False, soft_wrap=True)
    return out, err


def _bytes(n):
    return f"{n:,} bytes ({format_size(n)})"


def _load_model_or_exit(path, err):
    try:
        return load_model(path)
    except ModelError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(EXIT_BAD)


def _fail(err, message, code):
    err.print(f"[red]error:[/red] {escape(message)}")
    sys.exit(code)


def _budget_or_exit(model, memory, optimizer, err):
    budget = activation_budget(model, memory, optimizer)
    if budget.activation_bytes < 0:
        _fail(
            err,
            f"--memory {memory:,} bytes is less than the fixed memory: parameters "
            f"{model.params_bytes:,} bytes x {OPTIMIZER_FACTORS[optimizer]} ({optimizer}) = "
            f"{budget.fixed_bytes:,} bytes, before any activation",
            EXIT_NO,
        )
    return budget


def _header(console, model, budget):
    kind = "chain" if model.is_chain else "DAG"
    console.print(f"model [bold]{escape(model.name)}[/bold]: {len(model)} layers, {kind}")
    console.print(
        f"memory {_bytes(budget.memory_bytes)} = fixed {_bytes(budget.fixed_bytes)} "
        f"(params x{OPTIMIZER_FACTORS[budget.optimizer]}, {budget.optimizer}) "
        f"+ activation budget {_bytes(budget.activation_bytes)}"
    )


def _infeasible_message(exc, budget, model):
    text = str(exc)
    if exc.least_bytes is not None:
        text += (
            f"\nthe least memory that works: {_bytes(budget.memory_for(exc.least_bytes))} "
            f"(activations {_bytes(exc.least_bytes)} + fixed {_bytes(budget.fixed_bytes)})"
        )
    return text


memory_option = click.option(
    "--memory",
    "-m",
    type=SIZE,
    required=True,
    help="Device memory for the whole training step: bytes, or e.g. 256MB, 1.5GiB.",
)
optimizer_option = click.option(
    "--optimizer",
    type=click.Choice(sorted(OPTIMIZER_FACTORS)),
    default="sgd",
    show_default=True,
    help="Fixed memory = parameters x 2 (sgd: weights, gradients) or x 4 (adam: plus two moments).",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Write one JSON document to stdout and nothing else there."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeplan", message="edgeplan %(version)s")
def main():
    """Plan activation checkpointing so that training fits a device's memory.

    \b
    Examples:
      edgeplan solve examples/resnet18.json --memory 256MB -o schedule.json
      edgeplan compare examples/resnet18.json --memory 256MB
      edgeplan simulate examples/resnet18.json schedule.json --memory 256MB

    Exit codes: 0 success, 1 no schedule fits / schedule invalid or too big,
    2 bad usage or bad input file.
    """


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@memory_option
@click.option(
    "--strategy",
    "-s",
    type=click.Choice(solvers.strategy_names()),
    default="auto",
    show_default=True,
    help="Which solver; auto tries every applicable one and keeps the least compute.",
)
@optimizer_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the schedule to this file.")
@json_option
@click.option("--segments", type=click.IntRange(min=1), help="sequential: number of segments.")
def solve(model_path, memory, strategy, optimizer, output, as_json, segments):
    """Find the best schedule for MODEL that fits --memory.

    Writes the schedule (edgeplan-schedule/1) to -o FILE, or to stdout;
    a summary goes to stderr.

    \b
    Example:
      edgeplan solve examples/resnet18.json --memory 256MB -o schedule.json
    """
    _, err = _consoles(True)
    model = _load_model_or_exit(model_path, err)
    budget = _budget_or_exit(model, memory, optimizer, err)
    _header(err, model, budget)
    options = {"segments": segments}
    try:
        solution = solvers.solve(model, budget.activation_bytes, strategy, **options)
    except InfeasibleError as exc:
        _fail(err, _infeasible_message(exc, budget, model), EXIT_NO)
    except NotApplicableError as exc:
        _fail(err, str(exc), EXIT_BAD)
    except ValueError as exc:
        _fail(err, str(exc), EXIT_BAD)
    r = solution.result
    err.print(
        f"strategy [bold]{solution.strategy}[/bold] {escape(json.dumps(solution.params))}: "
        f"peak {_bytes(r.peak_bytes)}, overhead {r.overhead:.1%}, {r.forwards} forwards, "
        f"{len(solution.ops)} ops, solved in {solution.solve_seconds:.2f} s"
    )
    if output:
        try:
            solution.schedule.write(output, model)
        except OSError as exc:
            _fail(err, f"{output}: cannot write: {exc.strerror or exc}", EXIT_BAD)
        err.print(f"wrote {escape(output)}")
    if as_json or not output:
        for chunk in solution.schedule.iter_json(model):
            sys.stdout.write(chunk)
        sys.stdout.flush()


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@memory_option
@optimizer_option
@json_option
def compare(model_path, memory, optimizer, as_json):
    """Run every applicable strategy on MODEL and show them side by side.

    \b
    Example:
      edgeplan compare examples/resnet18.json --memory 256MB
    """
    out, err = _consoles(as_json)
    model = _load_model_or_exit(model_path, err)
    budget = _budget_or_exit(model, memory, optimizer, err)
    outcomes = solvers.run_all(model, budget.activation_bytes)
    outcomes.sort(key=lambda o: (not o.feasible, o.solution.result.compute if o.feasible else 0))
    if as_json:
        rows = []
        for o in outcomes:
            r = o.solution.result if o.feasible else None
            rows.append(
                {
                    "strategy": o.strategy,
                    "feasible": o.feasible,
                    "peak_bytes": r.peak_bytes if r else None,
                    "compute": r.compute if r else None,
                    "overhead": r.overhead if r else None,
                    "forwards": r.forwards if r else None,
                    "params": o.solution.params if r else None,
                    "least_bytes": budget.memory_for(o.least_bytes) if o.least_bytes is not None else None,
                    "solve_seconds": round(o.solve_seconds, 6),
                }
            )
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    _header(out, model, budget)
    table = Table()
    for col in ("strategy", "feasible", "peak", "overhead", "forwards", "solve time"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for o in outcomes:
        if o.feasible:
            r = o.solution.result
            table.add_row(
                o.strategy, "yes", format_size(r.peak_bytes), f"{r.overhead:.1%}", str(r.forwards),
                f"{o.solve_seconds:.3f} s",
            )
        else:
            need = (
                f"needs {format_size(budget.memory_for(o.least_bytes))}"
                if o.least_bytes is not None
                else escape(str(o.error))[:40]
            )
            table.add_row(o.strategy, "no", need, "", "", f"{o.solve_seconds:.3f} s")
    out.print(table)


@main.command(name="simulate")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("schedule_path", metavar="SCHEDULE", type=click.Path(dir_okay=False))
@click.option("--memory", "-m", type=SIZE, help="Also check that the schedule fits this device memory.")
@optimizer_option
@json_option
def simulate_cmd(model_path, schedule_path, memory, optimizer, as_json):
    """Replay SCHEDULE on MODEL and validate it (SPEC section 3).

    Exits 1 when the schedule is invalid, was made for another model
    (fingerprint), or does not fit --memory; 0 otherwise.

    \b
    Example:
      edgeplan simulate examples/resnet18.json schedule.json --memory 256MB
    """
    out, err = _consoles(as_json)
    model = _load_model_or_exit(model_path, err)
    try:
        schedule = load_schedule(schedule_path, model)
    except ScheduleFormatError as exc:
        _fail(err, str(exc), EXIT_BAD)
    result = simulate(model, schedule.ops)
    problems = []
    if not result.valid:
        problems.append(str(result.error))
    if schedule.fingerprint != model.fingerprint:
        problems.append(
            f"the schedule was made for another model (fingerprint {schedule.fingerprint}, "
            f"this model is {model.fingerprint})"
        )
    fits = None
    budget = None
    if memory is not None:
        budget = activation_budget(model, memory, optimizer)
        fits = result.valid and result.peak_bytes <= budget.activation_bytes
        if result.valid and not fits:
            problems.append(
                f"peak {result.peak_bytes:,} bytes does not fit the activation budget of "
                f"{budget.activation_bytes:,} bytes (memory {memory:,} minus fixed {budget.fixed_bytes:,})"
            )
    ok = not problems
    if as_json:
        doc = {
            "valid": result.valid,
            "peak_bytes": result.peak_bytes,
            "compute": result.compute,
            "baseline_compute": result.baseline_compute,
            "overhead": result.overhead,
            "forwards": result.forwards,
            "fingerprint_matches": schedule.fingerprint == model.fingerprint,
        }
        if memory is not None:
            doc["memory_bytes"] = memory
            doc["budget_bytes"] = budget.activation_bytes
            doc["fits"] = fits
        if not result.valid:
            doc["error"] = str(result.error)
        if problems:
            doc["problems"] = problems
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.print(f"schedule {escape(schedule_path)}: {len(schedule.ops)} ops, strategy {escape(schedule.strategy)}")
        out.print(
            f"peak {_bytes(result.peak_bytes)}, compute {result.compute:.6g} "
            f"(baseline {result.baseline_compute:.6g}, overhead {result.overhead:.1%}), "
            f"{result.forwards} forwards"
        )
        if ok:
            out.print("[green]valid[/green]" + (" and fits" if memory is not None else ""))
    for problem in problems:
        err.print(f"[red]invalid:[/red] {escape(problem)}")
    sys.exit(EXIT_OK if ok else EXIT_NO)


if __name__ == "__main__":  # pragma: no cover
    main()
