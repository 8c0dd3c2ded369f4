"""The ``edgeplan`` command line: parse, call the planner, print.  The only place that exits.

Exit codes: 0 success; 1 a negative answer (no schedule fits, the schedule is
invalid or does not fit); 2 bad usage or a bad input file; 3 an internal error
(a bug in edgeplan, or out of memory), reported as one line without a traceback;
130 interrupted (Ctrl-C).
"""

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from planner import extras
from planner.budget import OPTIMIZER_FACTORS, activation_budget
from planner.files import atomic_output
from planner.errors import (
    DeviceError,
    InfeasibleError,
    InternalError,
    MissingExtraError,
    ModelError,
    ModelMismatchError,
    NotApplicableError,
    OptionError,
    ScheduleError,
    ScheduleFormatError,
    TooLargeError,
)
from planner.model import load_model
from planner.schedule import load_schedule
from planner.simulate import simulate
from planner.sizes import SizeError, format_size, parse_size
from planner import solvers

__all__ = ["main"]

EXIT_OK, EXIT_NO, EXIT_BAD = 0, 1, 2
# An unexpected exception (a bug in edgeplan, or the machine running out of
# memory) is neither an answer (1) nor the user's fault (2): it gets its own
# code, one line on stderr, and no traceback.
EXIT_INTERNAL = 3

_CONTROL = dict.fromkeys(c for c in range(32) if c not in (9, 10))
_CONTROL[127] = None


def _clean(text):
    """``text`` with terminal control characters (ESC, CR, ...) shown as ``\\xNN``."""
    if not any(ord(ch) in _CONTROL for ch in text):
        return text
    return "".join(f"\\x{ord(ch):02x}" if ord(ch) in _CONTROL else ch for ch in text)


class _Group(click.Group):
    """The command group; turns any exception a command lets through into one line.

    Errors edgeplan raises on purpose keep their exit code (bad input 2,
    negative answer 1); Ctrl-C exits 130; anything else exits
    :data:`EXIT_INTERNAL` with the exception's type and message.  click's own
    exits, usage errors and broken pipes pass through to click; under
    ``--json`` a usage error also writes ``{"error": ...}`` to stdout.
    """

    def parse_args(self, ctx, args):
        # Known before the command parses its options, so that a usage error
        # in them still gets its JSON document.
        ctx.meta[_JSON_KEY] = "--json" in args
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException as exc:
            if exc.exit_code == EXIT_BAD:
                _json_error(exc.format_message())
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise  # click exits quietly on a closed pipe (`edgeplan ... | head`)
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(_consoles(True)[1], f"{where}{exc.strerror or exc}", EXIT_BAD)
        except (ModelError, ScheduleFormatError, NotApplicableError, TooLargeError, OptionError, SizeError, DeviceError) as exc:
            _fail(_consoles(True)[1], str(exc), EXIT_BAD)
        except (InfeasibleError, ScheduleError) as exc:
            _fail(_consoles(True)[1], str(exc), EXIT_NO)
        except InternalError as exc:
            _fail(_consoles(True)[1], _internal_message(exc), EXIT_INTERNAL)
        except KeyboardInterrupt:
            _fail(_consoles(True)[1], "interrupted", 130)  # the shell's code for SIGINT
        except MemoryError:
            _fail(_consoles(True)[1], "internal error: out of memory", EXIT_INTERNAL)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            _fail(_consoles(True)[1], _internal_message(exc), EXIT_INTERNAL)


def _internal_message(exc):
    """One line for a bug: the exception's type and its message, whitespace folded."""
    text = " ".join(str(exc).split())[:500]
    return f"internal error: {type(exc).__name__}: {text} (this is a bug in edgeplan; please report it)"


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
        _fail(err, str(exc), EXIT_BAD)


_JSON_KEY = "edgeplan.json"


def _json_error(message, **fields):
    """Under --json, the one document of a failed command: ``{"error": ..., **fields}``."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get(_JSON_KEY):
        sys.stdout.write(json.dumps({**fields, "error": message}, indent=2) + "\n")
        sys.stdout.flush()


def _fail(err, message, code, **fields):
    """One error line on stderr (and the JSON document under --json), then exit ``code``."""
    err.print(f"[red]error:[/red] {escape(_clean(message))}")
    _json_error(message, **fields)
    sys.exit(code)


def _skip_missing(names, err, *, named):
    """``names`` less the strategies whose optional modules are missing.

    Named by the user (``--strategy``, ``--strategies``), such a strategy is
    bad usage (exit 2); in the default set it is skipped with a note.
    """
    kept = []
    for name in names:
        try:
            extras.require(*solvers.STRATEGIES[name].requires, purpose=f"strategy {name!r}")
        except MissingExtraError as exc:
            if named:
                _fail(err, str(exc), EXIT_BAD)
            err.print(f"[yellow]note:[/yellow] skipped {escape(str(exc))}")
            continue
        kept.append(name)
    return kept


def _budget_or_exit(model, memory, optimizer, err):
    budget = activation_budget(model, memory, optimizer)
    if budget.activation_bytes < 0:
        # The least memory that works: what the default strategies need at a zero budget.
        outcomes = solvers.run_all(model, 0)
        least = min((o.least_bytes for o in outcomes if o.least_bytes is not None), default=None)
        least_memory = budget.memory_for(least) if least is not None else None
        _fail(
            err,
            f"--memory {memory:,} bytes is less than the fixed memory: parameters "
            f"{model.params_bytes:,} bytes x {OPTIMIZER_FACTORS[optimizer]} ({optimizer}) = "
            f"{budget.fixed_bytes:,} bytes, before any activation"
            + (f"; the least memory that works is {_bytes(least_memory)}" if least_memory else ""),
            EXIT_NO,
            feasible=False,
            memory_bytes=memory,
            fixed_bytes=budget.fixed_bytes,
            least_activation_bytes=least,
            least_memory_bytes=least_memory,
        )
    return budget


def _infeasible_fields(exc, budget):
    """The JSON fields of an infeasible answer: the least memory that works, when known."""
    least = exc.least_bytes
    return {
        "feasible": False,
        "memory_bytes": budget.memory_bytes,
        "budget_bytes": budget.activation_bytes,
        "least_activation_bytes": least,
        "least_memory_bytes": budget.memory_for(least) if least is not None else None,
    }


def _header(console, model, budget):
    kind = "chain" if model.is_chain else "DAG"
    console.print(f"model [bold]{escape(_clean(model.name))}[/bold]: {len(model)} layers, {kind}")
    console.print(
        f"memory {_bytes(budget.memory_bytes)} = fixed {_bytes(budget.fixed_bytes)} "
        f"(params x{OPTIMIZER_FACTORS[budget.optimizer]}, {budget.optimizer}) "
        f"+ activation budget {_bytes(budget.activation_bytes)}"
    )


def _infeasible_message(exc, budget):
    """An InfeasibleError's message, plus the least memory (fixed memory included) that works."""
    text = str(exc)
    if exc.least_bytes is not None:
        text += (
            f"\nthe least memory that works: {_bytes(budget.memory_for(exc.least_bytes))} "
            f"(activations {_bytes(exc.least_bytes)} + fixed {_bytes(budget.fixed_bytes)})"
        )
    return text


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
device_option = click.option(
    "--device",
    "device_name",
    metavar="NAME|FILE",
    help="A built-in device (edgeplan devices) or an edgeplan-device/1 file: its memory "
    "(--memory overrides it) and its storage, which adds the paging strategies.",
)
memory_option = click.option(
    "--memory",
    "-m",
    type=SIZE,
    help="Device memory for the whole training step: bytes, or e.g. 256MB, 1.5GiB "
    "(needed unless --device gives it).",
)


def _device_memory(model, memory, device_name, err, *, need_memory=True):
    """(memory in bytes or None, storage or None) from --memory and --device; exit 2 on bad input."""
    from planner.device import load_device

    storage = None
    if device_name is not None:
        device = load_device(device_name)
        storage = device.storage
        if memory is None:
            memory = device.memory_bytes
        err.print(
            f"device [bold]{escape(_clean(device.name))}[/bold]: memory {_bytes(device.memory_bytes)}"
            + (" (overridden by --memory)" if memory != device.memory_bytes else "")
            + (f", storage {_storage_text(storage)}" if storage is not None else ", no storage")
        )
    if memory is None and need_memory:
        _fail(err, "give --memory SIZE or --device NAME|FILE", EXIT_BAD)
    solvers.check_storage(model, storage)
    return memory, storage


def _rate(bytes_per_s):
    return f"{format_size(round(bytes_per_s))}/s"


def _seconds(value):
    if value == 0:
        return "0"
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= factor:
            return f"{value / factor:.4g} {unit}"
    return f"{value / 1e-9:.4g} ns"


def _storage_text(storage):
    text = (
        f"read {_rate(storage.read_bytes_per_s)} + {_seconds(storage.read_latency_s)}, "
        f"write {_rate(storage.write_bytes_per_s)} + {_seconds(storage.write_latency_s)}"
    )
    return text + (f", {format_size(storage.bytes)}" if storage.bytes is not None else "")


def _paging_text(result, model):
    """``transfer 1.2 ms, 3 pageouts, 3 pageins`` for a paging schedule, else ''."""
    if not result.pages:
        return ""
    unit = f" {model.time_unit}" if model.time_unit else ""
    return f", transfer {result.transfer:.6g}{unit}, {result.pageouts} pageouts, {result.pageins} pageins"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeplan", message="edgeplan %(version)s")
def main():
    """Plan activation checkpointing so that training fits a device's memory.

    \b
    Examples:
      edgeplan solve examples/resnet18.json --memory 256MB -o schedule.json
      edgeplan compare examples/resnet18.json --memory 256MB
      edgeplan simulate examples/resnet18.json schedule.json --memory 256MB

    Exit codes: 0 success, 1 no schedule fits / schedule invalid, too big or
    made for another model, 2 bad usage, bad option or bad input file (or a
    missing optional extra), 3 internal error (a bug: please report it).
    With --json, stdout holds one JSON document whatever the exit code.
    """


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@memory_option
@device_option
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
@click.option(
    "--snapshots",
    type=click.IntRange(min=0),
    help="revolve: layer outputs held as checkpoints at once (the model input is free).",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="milp: give up proving optimality after this many seconds and keep the best schedule found "
    "(default 60 with --strategy milp; auto runs milp on DAGs only, for 0.5 s, unless this is given).",
)
def solve(model_path, memory, device_name, strategy, optimizer, output, as_json, segments, snapshots, time_limit):
    """Find the best schedule for MODEL that fits --memory (or --device).

    Writes the schedule (edgeplan-schedule/1; /2 when it pages to the
    --device's storage) to -o FILE, or to stdout; a summary goes to stderr.

    \b
    Examples:
      edgeplan solve examples/resnet18.json --memory 256MB -o schedule.json
      edgeplan solve examples/resnet18.json --device jetson-tx2-8gb --memory 200MB -o schedule.json
    """
    _, err = _consoles(True)
    model = _load_model_or_exit(model_path, err)
    memory, storage = _device_memory(model, memory, device_name, err)
    options = {"segments": segments, "snapshots": snapshots, "time_limit": time_limit}
    solvers.check_options(model, strategy, options)
    budget = _budget_or_exit(model, memory, optimizer, err)
    _header(err, model, budget)
    names = solvers.applicable(model, options, include_missing=True) if strategy == "auto" else [strategy]
    _skip_missing(names, err, named=strategy != "auto")
    try:
        solution = solvers.solve(model, budget.activation_bytes, strategy, storage=storage, **options)
    except InfeasibleError as exc:
        _fail(err, _infeasible_message(exc, budget), EXIT_NO, **_infeasible_fields(exc, budget))
    except (NotApplicableError, TooLargeError) as exc:
        _fail(err, str(exc), EXIT_BAD)
    except ValueError as exc:
        _fail(err, str(exc), EXIT_BAD)
    r = solution.result
    err.print(
        f"strategy [bold]{solution.strategy}[/bold] {escape(json.dumps(solution.params))}: "
        f"peak {_bytes(r.peak_bytes)}, overhead {r.overhead:.1%}, {r.forwards} forwards"
        f"{escape(_paging_text(r, model))}, {len(solution.ops)} ops, solved in {solution.solve_seconds:.2f} s"
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


def _strategy_list(ctx, param, value):
    """--strategies a,b,c: registered names, in the order given (exit 2 otherwise)."""
    if value is None:
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise click.BadParameter("name at least one strategy", ctx, param)
    unknown = [n for n in names if n not in solvers.STRATEGIES]
    if unknown:
        raise click.BadParameter(
            f"unknown strategy {', '.join(repr(n) for n in unknown)}; choose from "
            f"{', '.join(solvers.STRATEGIES)}",
            ctx,
            param,
        )
    return list(dict.fromkeys(names))


strategies_option = click.option(
    "--strategies",
    metavar="A,B,...",
    callback=_strategy_list,
    help="Only these strategies, comma-separated (default: every applicable one).",
)


def _tuning_options(fn):
    """--segments, --snapshots, --time-limit: passed to the strategies that take them."""
    fn = click.option(
        "--time-limit", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
        help="milp: stop the solver after this many seconds (by default milp runs on DAGs only, "
        "briefly: 0.5 s, in sweep 0.25 s per size; with this, on every model, for this long).",
    )(fn)
    fn = click.option(
        "--snapshots", "snapshots_", type=click.IntRange(min=0),
        help="revolve: layer outputs held as checkpoints at once.",
    )(fn)
    fn = click.option("--segments", "segments_", type=click.IntRange(min=1), help="sequential: number of segments.")(fn)
    return fn


def _progress(err, total, label):
    """A rich progress bar on stderr while strategies solve (terminals only), and its hook."""
    from contextlib import nullcontext

    if not err.is_terminal:
        return nullcontext(), None
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=err, transient=True,
    )
    task = bar.add_task(label, total=total)

    def hook(*args):
        *where, name, outcome = args
        prefix = f"{format_size(where[0])}: " if where else ""
        if outcome is None:
            bar.update(task, description=f"{label}: {prefix}{name}")
        else:
            bar.advance(task)

    return bar, hook


def _compare_rows(outcomes, budget, *, paging=False):
    """Outcomes in table order: feasible by compute and transfer (then ops), then by the memory they need.

    With ``paging`` (a storage was given) rows also have ``transfer``,
    ``pageouts`` and ``pageins``.
    """
    feasible = sorted(
        (o for o in outcomes if o.feasible),
        key=lambda o: (o.solution.result.compute + o.solution.result.transfer, len(o.solution.ops)),
    )
    rest = sorted(
        (o for o in outcomes if not o.feasible),
        key=lambda o: (o.least_bytes is None, o.least_bytes or 0, o.strategy),
    )
    rows = []
    for k, o in enumerate(feasible + rest):
        r = o.solution.result if o.feasible else None
        least = o.least_bytes
        rows.append(
            {
                "strategy": o.strategy,
                "feasible": o.feasible,
                "best": o.feasible and k == 0,
                "peak_bytes": r.peak_bytes if r else None,
                "compute": r.compute if r else None,
                "overhead": r.overhead if r else None,
                "forwards": r.forwards if r else None,
                "params": o.solution.params if r else None,
                "solve_seconds": round(o.solve_seconds, 6),
                "least_activation_bytes": least,
                "least_memory_bytes": budget.memory_for(least) if least is not None else None,
                "error": None if r else str(o.error),
                "applicable": not isinstance(o.error, (NotApplicableError, TooLargeError)),
            }
        )
        if paging:
            rows[-1].update(
                transfer=r.transfer if r else None,
                pageouts=r.pageouts if r else None,
                pageins=r.pageins if r else None,
            )
    return rows


def _wide(console):
    """Logs and pipes get 124 columns (rich assumes 80), so tables are not squeezed."""
    if not console.is_terminal and console.width < 124:
        console.width = 124
    return console


def _compare_table(rows, width=124):
    """The rich table of ``edgeplan compare``: * marks the best feasible row.

    Narrow terminals drop the notes column (under 124 columns) and the exact
    byte counts (under 100); ``--json`` always has everything.
    """
    from rich import box

    columns = (
        ("strategy", "left"), ("fits", "left"), ("peak", "right"), ("peak bytes", "right"),
        ("overhead", "right"), ("forwards", "right"), ("solve time", "right"), ("params / notes", "left"),
    )
    keep = [width >= 124 or col != "params / notes" for col, _ in columns]
    keep = [k and (width >= 100 or col != "peak bytes") for k, (col, _) in zip(keep, columns)]
    table = Table(box=box.SIMPLE_HEAVY, header_style="bold", pad_edge=False)
    for (col, justify), k in zip(columns, keep):
        if k:
            table.add_column(col, justify=justify, no_wrap=True)

    def add(*cells, style=None):
        table.add_row(*(c for c, k in zip(cells, keep) if k), style=style)

    def short(text, limit=26):
        text = _clean(" ".join(text.split()))
        return escape(text if len(text) <= limit else text[: limit - 3] + "...")

    for row in rows:
        seconds = f"{row['solve_seconds']:.3f} s"
        name = ("* " if row["best"] else "  ") + escape(row["strategy"])
        if row["feasible"]:
            params = ", ".join(f"{k}={v}" for k, v in row["params"].items())
            if row.get("pageouts"):
                params = f"{row['pageouts']} out/{row['pageins']} in" + (", " + params if params else "")
            add(
                name, "yes", format_size(row["peak_bytes"]), f"{row['peak_bytes']:,}",
                f"{row['overhead']:.1%}", str(row["forwards"]), seconds, short(params),
                style="bold green" if row["best"] else None,
            )
        elif row["least_memory_bytes"] is not None:
            add(
                name, "no", f"needs {format_size(row['least_memory_bytes'])}",
                f"{row['least_memory_bytes']:,}", "", "", seconds, "least memory that works",
                style="dim",
            )
        else:
            strategy = solvers.STRATEGIES[row["strategy"]]
            note = "n/a: chains only" if not row["applicable"] and strategy.chains_only else short(row["error"])
            add(name, "no", "", "", "", "", seconds, note, style="dim")
    return table


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@memory_option
@device_option
@optimizer_option
@strategies_option
@_tuning_options
@json_option
def compare(model_path, memory, device_name, optimizer, strategies, segments_, snapshots_, time_limit, as_json):
    """Run every applicable strategy on MODEL at --memory and show them side by side.

    One row per strategy, the feasible ones by compute (the best marked),
    then the others with the least memory each would need.  Peaks are
    activation memory; the header gives the fixed memory (parameters x 2 for
    SGD, x 4 for Adam) and what plain autograd (store-all) needs.  Exits 1
    when no strategy fits.

    \b
    Examples:
      edgeplan compare examples/resnet18.json --memory 256MB
      edgeplan compare examples/mobilenet_v2.json --memory 300MB --strategies dp,revolve,sequential
      edgeplan compare examples/resnet18.json --memory 256MB --json
      edgeplan compare examples/vgg16_bn.json --device rpi4-4gb-sd --memory 40MB
    """
    out, err = _consoles(as_json)
    model = _load_model_or_exit(model_path, err)
    memory, storage = _device_memory(model, memory, device_name, err)
    options = {"segments": segments_, "snapshots": snapshots_, "time_limit": time_limit}
    solvers.check_options(model, strategies, options)
    budget = _budget_or_exit(model, memory, optimizer, err)
    names = (
        strategies if strategies is not None
        else solvers.applicable(model, options, storage=storage, include_missing=True)
    )
    names = _skip_missing(names, err, named=strategies is not None)
    store_all = solvers.solve(model, None, "store-all").result.peak_bytes
    display, hook = _progress(err, len(names), "solving")
    with display:
        outcomes = solvers.run_all(
            model, budget.activation_bytes, strategies=strategies, options=options, progress=hook,
            storage=storage,
        )
    rows = _compare_rows(outcomes, budget, paging=storage is not None)
    code = EXIT_OK if any(row["feasible"] for row in rows) else EXIT_NO
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        sys.exit(code)
    _header(_wide(out), model, budget)
    out.print(
        f"store-all (no recomputation) peak {_bytes(store_all)}: needs --memory "
        f"{_bytes(budget.memory_for(store_all))}"
    )
    out.print(_compare_table(rows, out.width))
    best = next((row for row in rows if row["best"]), None)
    if best:
        out.print(
            f"* best: [bold]{escape(best['strategy'])}[/bold], {best['overhead']:.1%} extra compute "
            + ("and transfer " if storage is not None else "")
            + "(edgeplan solve --strategy auto picks it)"
        )
    else:
        least = [row["least_memory_bytes"] for row in rows if row["least_memory_bytes"] is not None]
        out.print(
            "[red]no strategy fits[/red]"
            + (f"; the least memory that works is {_bytes(min(least))}" if least else "")
        )
    sys.exit(code)


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--from", "low", type=SIZE, help="Smallest memory (default: the least memory any strategy trains with).")
@click.option("--to", "high", type=SIZE, help="Largest memory (default: what store-all, plain autograd, needs).")
@click.option("--steps", type=click.IntRange(min=2, max=1000), default=12, show_default=True, help="Number of memory sizes.")
@strategies_option
@optimizer_option
@_tuning_options
@device_option
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also draw the curves into this PNG (pip install edgeplan[plot]).")
@json_option
def sweep(model_path, low, high, steps, strategies, optimizer, segments_, snapshots_, time_limit, device_name, plot_path, as_json):
    """Memory/overhead curve: every strategy at --steps memory sizes.

    Sizes are device memory for the whole step (activations + fixed memory),
    evenly spread from --from to --to.  Prints a table and a text chart, or
    with --json a list of points (memory_bytes, strategy, feasible,
    overhead, peak_bytes); --plot FILE.png draws the curves with matplotlib.

    \b
    Examples:
      edgeplan sweep examples/mobilenet_v2.json
      edgeplan sweep examples/resnet18.json --from 180MB --to 280MB --steps 6 --strategies dp,revolve,sequential
      edgeplan sweep examples/resnet18.json --json --plot resnet18.png
      edgeplan sweep examples/vgg16_bn.json --device jetson-tx2-8gb

    With --device, the device's storage adds the paging strategies and --to
    defaults to the device memory when that is less than store-all's.
    """
    from planner import sweep as sweeping

    out, err = _consoles(as_json)
    model = _load_model_or_exit(model_path, err)
    device_memory, storage = _device_memory(model, None, device_name, err, need_memory=False)
    if plot_path:
        extras.require("matplotlib", purpose="--plot")  # fail before the slow part, not after
    options = {"segments": segments_, "snapshots": snapshots_, "time_limit": time_limit}
    solvers.check_options(model, strategies, options)
    names = (
        strategies if strategies is not None
        else solvers.applicable(model, options, storage=storage, include_missing=True)
    )
    names = _skip_missing(names, err, named=strategies is not None)
    shared = {}  # work the strategies keep across the sizes (dp's tables)
    span = sweeping.memory_range(
        model, optimizer=optimizer, strategies=strategies, options=options, shared=shared, storage=storage
    )
    low = span.least_memory_bytes if low is None else low
    if high is None:
        high = span.store_all_memory_bytes
        if device_memory is not None:
            high = max(min(high, device_memory), low)
    if low > high:
        _fail(err, f"--from {low:,} bytes is above --to {high:,} bytes", EXIT_BAD)
    sizes = sweeping.budgets(low, high, steps)
    display, hook = _progress(err, len(sizes) * len(names), "sweeping")
    with display:
        points = sweeping.sweep(
            model, sizes, optimizer=optimizer, strategies=strategies, options=options, progress=hook,
            shared=shared, storage=storage,
        )
    if plot_path:
        from planner.plot import write_png

        try:
            write_png(
                points, plot_path, title=f"{model.name}: recomputation overhead against memory ({optimizer})",
                store_all_memory=span.store_all_memory_bytes, fixed_bytes=span.fixed_bytes,
            )
        except OSError as exc:
            _fail(err, f"{plot_path}: cannot write: {exc.strerror or exc}", EXIT_BAD)
    if as_json:
        sys.stdout.write(json.dumps([p.to_dict() for p in points], indent=2) + "\n")
        if plot_path:
            err.print(f"wrote {escape(_clean(plot_path))}")
        return
    from planner.plot import text_chart

    kind = "chain" if model.is_chain else "DAG"
    _wide(out).print(f"model [bold]{escape(_clean(model.name))}[/bold]: {len(model)} layers, {kind}")
    out.print(
        f"fixed memory {_bytes(span.fixed_bytes)} (params x{OPTIMIZER_FACTORS[optimizer]}, {optimizer}); "
        f"store-all needs {_bytes(span.store_all_memory_bytes)}; least that works "
        f"{_bytes(span.least_memory_bytes)}"
    )
    table = Table(header_style="bold")
    table.add_column("memory", justify="right", no_wrap=True)
    for name in names:
        table.add_column(escape(name), justify="right", no_wrap=True)
    for size in sizes:
        row = [p for p in points if p.memory_bytes == size]
        feasible = [p for p in row if p.feasible]
        best = min((p.overhead for p in feasible), default=None)  # with transfer, when paging
        cells = []
        for p in row:
            if not p.feasible:
                cells.append("[dim]- [/dim]")
            elif p.overhead == best:
                cells.append(f"[bold green]{p.overhead:.1%}*[/bold green]")
            else:
                cells.append(f"{p.overhead:.1%} ")
        table.add_row(format_size(size), *cells)
    out.print(table)
    out.print(
        "overhead = extra compute" + (" and transfer" if storage is not None else "")
        + " over one forward and one backward per layer; - = does not fit; * = best"
    )
    out.print(text_chart(points, store_all_memory=span.store_all_memory_bytes), markup=False)
    if plot_path:
        out.file.flush()
        err.print(f"wrote {escape(_clean(plot_path))}")


@main.command()
@json_option
def devices(as_json):
    """List the built-in devices that --device NAME takes.

    Each has the memory a training step may use and the storage that layer
    outputs can be paged to (read and write rates, latency per transfer),
    with the source of its figures.  --json gives their edgeplan-device/1
    documents; write one to a file and edit it for your own device.

    \b
    Examples:
      edgeplan devices
      edgeplan devices --json
      edgeplan solve examples/vgg16_bn.json --device rpi4-4gb-sd --memory 40MB
    """
    from planner.device import PRESETS

    out, _ = _consoles(as_json)
    if as_json:
        sys.stdout.write(json.dumps([d.to_dict() for d in PRESETS.values()], indent=2) + "\n")
        return
    table = Table(header_style="bold")
    for col, justify in (("device", "left"), ("memory", "right"), ("read", "right"), ("read latency", "right"),
                         ("write", "right"), ("write latency", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for d in PRESETS.values():
        st = d.storage
        cells = ["-"] * 4 if st is None else [
            _rate(st.read_bytes_per_s), _seconds(st.read_latency_s),
            _rate(st.write_bytes_per_s), _seconds(st.write_latency_s),
        ]
        table.add_row(escape(d.name), format_size(d.memory_bytes), *cells)
    _wide(out).print(table)
    for d in PRESETS.values():
        out.print(f"{escape(d.name)}: {escape(d.source)}")


@main.command(name="simulate")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("schedule_path", metavar="SCHEDULE", type=click.Path(dir_okay=False))
@click.option("--memory", "-m", type=SIZE, help="Also check that the schedule fits this device memory.")
@optimizer_option
@click.option(
    "--exit-zero", is_flag=True,
    help="Report problems but exit 0 (bad input files still exit 2): for CI steps that only warn.",
)
@json_option
def simulate_cmd(model_path, schedule_path, memory, optimizer, exit_zero, as_json):
    """Replay SCHEDULE on MODEL and validate it (the rules of docs/format.md, paging included).

    Exits 1 when the schedule is invalid, was made for another model
    (fingerprint), or does not fit --memory; 0 otherwise (always 0 with
    --exit-zero).  A CI gate: regenerate nothing, just check.  An
    edgeplan-schedule/2 is replayed with the storage it names.

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
    except ModelMismatchError as exc:
        fields = {"valid": False, "fingerprint_matches": False, "problems": [str(exc)]}
        _fail(err, str(exc), EXIT_OK if exit_zero else EXIT_NO, **fields)
    result = simulate(model, schedule.ops, storage=schedule.storage)
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
        if schedule.storage is not None:
            doc.update(transfer=result.transfer, pageouts=result.pageouts, pageins=result.pageins)
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
        out.print(f"schedule {escape(_clean(schedule_path))}: {len(schedule.ops)} ops, strategy {escape(_clean(schedule.strategy))}")
        out.print(
            f"peak {_bytes(result.peak_bytes)}, compute {result.compute:.6g} "
            f"(baseline {result.baseline_compute:.6g}, overhead {result.overhead:.1%}), "
            f"{result.forwards} forwards{escape(_paging_text(result, model))}"
        )
        if ok:
            out.print("[green]valid[/green]" + (" and fits" if memory is not None else ""))
    for problem in problems:
        err.print(f"[red]invalid:[/red] {escape(problem)}")
    sys.exit(EXIT_OK if ok or exit_zero else EXIT_NO)


class ShapeType(click.ParamType):
    """SHAPE: comma-separated positive sizes, batch first (8,3,224,224)."""

    name = "SHAPE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from planner.io.torch_profile import parse_shape

        try:
            return parse_shape(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _quiet_torch():
    """Keep PyTorch's C++ log lines (allocator notes while profiling) off stderr."""
    import os

    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")


target_argument = click.argument("target", metavar="TARGET")
shape_option = click.option(
    "--input", "shape", type=ShapeType(), required=True,
    help="Input shape, batch first: 8,3,224,224.",
)
dtype_option = click.option(
    "--dtype", type=click.Choice(["float32", "float64", "float16", "bfloat16"]),
    default="float32", show_default=True, help="Data type the model runs in.",
)
stages_option = click.option(
    "--stages", type=click.Choice(["auto", "modules", "ops"]), default="auto", show_default=True,
    help="modules: the children of an nn.Sequential form a chain; ops: a DAG of torch.fx ops; "
    "auto: modules for a Sequential, ops otherwise.",
)
device_option = click.option(
    "--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
    help="Where to run.",
)


@main.command()
@target_argument
@shape_option
@dtype_option
@stages_option
@click.option("--estimate", is_flag=True, help="Count FLOPs on fake tensors instead of running (FakeTensorMode).")
@click.option("--repeats", type=click.IntRange(1, 100), default=3, show_default=True, help="Timed runs per stage (median).")
@click.option("--name", help="Model name (default: the factory's name).")
@device_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the model file here.")
@json_option
def profile(target, shape, dtype, stages, estimate, repeats, name, device, output, as_json):
    """Profile a PyTorch model into a model file (edgeplan-model/1).

    TARGET is path/to/file.py:factory or package.module:factory; the factory
    returns an nn.Module (an nn.Sequential or a list of modules profiles as a
    chain of stages).  Each stage runs on its real input: times, output and
    saved sizes, workspaces.  This imports and runs TARGET's code, and only
    that.  Needs PyTorch: pip install edgeplan[torch].

    \b
    Example:
      edgeplan profile examples/tiny_cnn.py:tiny_cnn --input 8,3,32,32 -o tiny_cnn.json
    """
    extras.require("torch", purpose="edgeplan profile")
    _quiet_torch()
    from planner.io.torch_profile import profile_target

    out, err = _consoles(True)
    options = {"dtype": dtype, "stages": stages, "estimate": estimate, "repeats": repeats, "device": device}
    if name:
        options["name"] = name
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # what user code prints is not data
        doc = profile_target(target, shape, **options)
    text = json.dumps(doc, indent=2) + "\n"
    layers = doc["layers"]
    kind = "chain" if all(
        l["inputs"] == (["input"] if k == 0 else [layers[k - 1]["name"]]) for k, l in enumerate(layers)
    ) else "DAG"
    err.print(
        f"model [bold]{escape(_clean(doc['name']))}[/bold]: {len(layers)} layers, {kind}, input "
        f"{_bytes(doc['input_bytes'])}, activations {_bytes(sum(l['output_bytes'] for l in layers))}, "
        f"params {_bytes(sum(l['params_bytes'] for l in layers))}"
    )
    if output:
        with atomic_output(output) as f:
            f.write(text)
        err.print(f"wrote {escape(_clean(output))}")
    if as_json or not output:
        sys.stdout.write(text)
        sys.stdout.flush()


@main.command()
@target_argument
@shape_option
@click.option("--schedule", "schedule_path", type=click.Path(dir_okay=False), required=True,
              help="The schedule to run (edgeplan-schedule/1).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="The model file the schedule was made for (checks the fingerprint and predicts the peak).")
@dtype_option
@stages_option
@device_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the input and the RNG.")
@click.option("--steps", type=click.IntRange(1, 10000), default=1, show_default=True,
              help="SGD steps per run (plain autograd, then the schedule), from the same start.")
@click.option("--lr", type=click.FloatRange(min=0.0), default=0.01, show_default=True,
              help="Learning rate of those steps.")
@json_option
def verify(target, shape, schedule_path, model_path, dtype, stages, device, seed, steps, lr, as_json):
    """Train with SCHEDULE on the real model and compare with plain autograd.

    Runs --steps SGD steps twice from the same start, input and seed: under
    the training executor running the schedule's ops (forward with or
    without save, backward, free) on TARGET's stages, and under plain
    autograd.  Compares the first step's parameter gradients, the buffers and
    the final parameters (within 1e-5 for float32), and reports the measured
    peak of a step (allocator) and the mean step time of each run.  Exits 0
    when they match and the measured peak is within 2% of the budget the
    schedule was planned for (budget_bytes), 1 otherwise.  Imports and runs
    TARGET's code, and only that.  Needs PyTorch: pip install edgeplan[torch].

    \b
    Example:
      edgeplan verify examples/tiny_cnn.py:tiny_cnn --input 8,3,32,32 \\
          --schedule schedule.json --model tiny_cnn.json --steps 5
    """
    extras.require("torch", purpose="edgeplan verify")
    _quiet_torch()
    from planner.io.torch_profile import load_target, profile_model
    from planner.model import model_from_dict
    from planner.runtime.torch import verify as run_verify
    from planner.schedule import schedule_from_dict

    import contextlib

    out, err = _consoles(as_json)
    with contextlib.redirect_stdout(sys.stderr):  # what user code prints is not data
        obj = load_target(target)
    if model_path:
        model = _load_model_or_exit(model_path, err)
    else:
        # Only the layer names and the graph are needed: estimate, nothing runs.
        import copy

        with contextlib.redirect_stdout(sys.stderr):
            doc = profile_model(copy.deepcopy(obj), shape, dtype=dtype, stages=stages, estimate=True,
                                name=target.rpartition(":")[2])
        model = model_from_dict(doc, source_name=f"profile of {target}")
    from planner.model import read_json_file

    document = read_json_file(schedule_path, error=ScheduleFormatError, what="schedule file")
    schedule = schedule_from_dict(document, model, source_name=schedule_path)
    if model_path and schedule.fingerprint != model.fingerprint:
        _fail(err, f"{schedule_path}: the schedule was made for another model (fingerprint "
              f"{schedule.fingerprint}, {model_path} is {model.fingerprint})", EXIT_NO)
    replayed = model
    if schedule.storage is not None and not model_path:  # estimated: times in flop; only validity and memory used
        import dataclasses

        replayed = dataclasses.replace(model, time_unit="s")
    result = simulate(replayed, schedule.ops, storage=schedule.storage)
    if not result.valid:
        _fail(err, f"{schedule_path}: invalid schedule: {result.error}", EXIT_NO)
    transfer = _predicted_transfer_seconds(model, schedule)
    predicted = result.peak_bytes if model_path else schedule.predicted.get("peak_bytes")
    if not isinstance(predicted, int) or isinstance(predicted, bool):
        predicted = None
    with contextlib.redirect_stdout(sys.stderr):
        r = run_verify(obj, shape, schedule.ops, dtype=dtype, stages=stages, names=[layer.name for layer in model.layers],
                       model=model if model_path else None, predicted=predicted, seed=seed, device=device,
                       steps=steps, lr=lr, budget=schedule.budget_bytes, predicted_transfer=transfer)
    if as_json:
        sys.stdout.write(json.dumps(r.to_dict(), indent=2) + "\n")
    else:
        _print_verify(out, r, schedule_path, schedule.strategy)
    if not r.grads_match:
        err.print(f"[red]training differs from plain autograd[/red] (gradients {r.max_abs_diff:.3g}, "
                  f"parameters after {r.steps} steps {r.max_param_diff:.3g})")
    if r.fits_budget is False:
        err.print(f"[red]measured peak {r.measured_peak_bytes:,} bytes exceeds the schedule's budget of "
                  f"{r.budget_bytes:,} bytes by more than 2%[/red]")
    sys.exit(EXIT_OK if r.ok else EXIT_NO)


def _print_verify(out, r, schedule_path, strategy):
    out.print(f"schedule {escape(_clean(schedule_path))}: {r.ops} ops, strategy {escape(_clean(strategy))}, on {r.device}")
    out.print(f"grads_match: {str(r.grads_match).lower()}")
    out.print(f"max_abs_diff: {r.max_abs_diff:.3g}")
    out.print(f"buffers_match: {str(r.buffers_match).lower()}")
    out.print(f"steps: {r.steps} (lr {r.lr:g}), max_param_diff: {r.max_param_diff:.3g}")
    out.print(f"measured_peak_bytes: {_bytes(r.measured_peak_bytes)}")
    if r.predicted_peak_bytes is not None:
        out.print(f"predicted_peak_bytes: {_bytes(r.predicted_peak_bytes)} (measured {r.relative_error:+.1%})")
    if r.budget_bytes is not None:
        out.print(f"budget_bytes: {_bytes(r.budget_bytes)} (fits within 2%: {str(r.fits_budget).lower()})")
    out.print(f"plain autograd (store-all) measured: {_bytes(r.reference_peak_bytes)}")
    out.print(f"step time: {r.step_seconds * 1000:.2f} ms scheduled, {r.reference_step_seconds * 1000:.2f} ms plain")
    if r.pageouts or r.pageins:
        predicted = "" if r.predicted_transfer_seconds is None else f", predicted {r.predicted_transfer_seconds * 1000:.2f} ms"
        out.print(f"transfer: {r.transfer_seconds * 1000:.2f} ms measured{predicted} "
                  f"({r.pageouts} pageouts, {r.pageins} pageins)")


def _predicted_transfer_seconds(model, schedule):
    """Seconds the schedule's storage figures give its pageouts and pageins (None without storage)."""
    st = schedule.storage
    if st is None:
        return None
    out = [layer.output_bytes for layer in model.layers]
    return sum(st.pageout_seconds(out[op.layer]) if op.kind.value == "pageout" else st.pagein_seconds(out[op.layer])
               for op in schedule.ops if op.kind.value in ("pageout", "pagein"))


class NamedShapeType(click.ParamType):
    """NAME:SHAPE: an ONNX graph input and its shape, batch first (input:8,3,224,224)."""

    name = "NAME:SHAPE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        name, sep, dims = str(value).rpartition(":")
        if not sep or not name:
            self.fail(f"{value!r}: expected NAME:SHAPE, e.g. input:8,3,224,224", param, ctx)
        try:
            shape = tuple(int(d) for d in dims.replace(" ", "").split(","))
        except ValueError:
            shape = ()
        if not shape or any(d < 1 for d in shape):
            self.fail(f"{value!r}: SHAPE must be positive integers separated by commas", param, ctx)
        return name, shape


@main.command(name="import")
@click.argument("file_path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the model file (edgeplan-model/1) here.")
@click.option(
    "--from", "source_format", type=click.Choice(["checkmate", "onnx"]),
    help="The format of FILE (default: from its extension: .onnx is onnx, .json is checkmate).",
)
@click.option(
    "--input", "inputs", type=NamedShapeType(), multiple=True,
    help="onnx: the shape of a graph input whose shape is not fixed in the file (repeatable).",
)
@json_option
def import_cmd(file_path, output, source_format, inputs, as_json):
    """Convert a model from another tool into a model file (edgeplan-model/1).

    Reads Checkmate/Moccasin graphs (networkx node-link JSON: training graphs
    with their backward nodes, or forward-only graphs whose backward costs are
    estimated as 2 x forward) and ONNX models (pip install edgeplan[onnx]).
    The model is validated before it is written; a summary goes to stderr.

    \b
    Examples:
      edgeplan import "VGG16 (MLSys)_256_(224, 224, 3)_train_nx.json" -o vgg16.json
      edgeplan import resnet18.onnx --input input:8,3,224,224 -o resnet18.json
    """
    from planner.io import import_file

    _, err = _consoles(True)
    try:
        imported = import_file(file_path, source_format=source_format, input_shapes=dict(inputs) or None)
    except ModelError as exc:
        _fail(err, str(exc), EXIT_BAD)
    model = imported.model
    err.print(
        f"imported {escape(_clean(file_path))} ({imported.source_format}): model "
        f"[bold]{escape(_clean(model.name))}[/bold], {len(model)} layers, "
        f"{'chain' if model.is_chain else 'DAG'}, backward costs "
        + ("[yellow]estimated[/yellow]" if imported.estimated else "from the file")
    )
    if model.source:
        err.print(f"source: {escape(_clean(model.source))}")
    text = json.dumps(imported.document, indent=2, ensure_ascii=False) + "\n"
    if output:
        with atomic_output(output) as f:
            f.write(text)
        err.print(f"wrote {escape(_clean(output))}")
    if as_json or not output:
        sys.stdout.write(text)
        sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    main()
