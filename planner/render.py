"""What the ``edgeplan`` commands show people: rich text and tables, no decisions.

Every function here turns an answer the library already gave (a solution,
compare rows, sweep points, a verdict) into text on a rich console.  User
text is escaped and terminal control characters are shown as ``\\xNN``.
"""

from contextlib import nullcontext

from rich.markup import escape
from rich.table import Table

from planner.budget import OPTIMIZER_FACTORS
from planner.sizes import format_size

__all__ = [
    "clean", "bytes_text", "rate", "seconds", "storage_text", "paging_text", "joules_text", "wide", "header",
    "model_line", "device_line", "solution_line", "plan_report", "progress", "compare_table", "compare_report",
    "sweep_report", "devices_report", "simulate_report", "problems", "verify_report", "verify_problems", "profile_line",
    "import_line",
]

_CONTROL = dict.fromkeys(c for c in range(32) if c not in (9, 10))
_CONTROL[127] = None


def clean(text):
    """``text`` with terminal control characters (ESC, CR, ...) shown as ``\\xNN``."""
    if not any(ord(ch) in _CONTROL for ch in text):
        return text
    return "".join(f"\\x{ord(ch):02x}" if ord(ch) in _CONTROL else ch for ch in text)


def bytes_text(n):
    """``1,234 bytes (1.23 kB)``."""
    return f"{n:,} bytes ({format_size(n)})"


def rate(bytes_per_s):
    return f"{format_size(round(bytes_per_s))}/s"


def seconds(value):
    if value == 0:
        return "0"
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= factor:
            return f"{value / factor:.4g} {unit}"
    return f"{value / 1e-9:.4g} ns"


def storage_text(storage):
    text = (
        f"read {rate(storage.read_bytes_per_s)} + {seconds(storage.read_latency_s)}, "
        f"write {rate(storage.write_bytes_per_s)} + {seconds(storage.write_latency_s)}"
    )
    return text + (f", {format_size(storage.bytes)}" if storage.bytes is not None else "")


def joules_text(value):
    """``12.3 J`` (4 significant digits), or '' for None."""
    return "" if value is None else f"{value:.4g} J"


def paging_text(result, model):
    """``transfer 1.2 ms, 3 pageouts, 3 pageins`` for a paging schedule, else ''."""
    if not result.pages:
        return ""
    unit = f" {model.time_unit}" if model.time_unit else ""
    text = f", transfer {result.transfer:.6g}{unit}, {result.pageouts} pageouts, {result.pageins} pageins"
    return text if result.time is None else text + f", step {result.time:.6g}{unit} with transfers beside compute"


def wide(console):
    """Logs and pipes get 124 columns (rich assumes 80), so tables are not squeezed."""
    if not console.is_terminal and console.width < 124:
        console.width = 124
    return console


def _model_text(name, layers, is_chain, *, after_name=":"):
    """``model [bold]NAME[/bold]: 12 layers, chain`` (or ``DAG``), the name escaped."""
    return f"model [bold]{escape(clean(name))}[/bold]{after_name} {layers} layers, {'chain' if is_chain else 'DAG'}"


def model_line(console, model):
    console.print(_model_text(model.name, len(model), model.is_chain))


def header(console, model, split):
    model_line(console, model)
    console.print(
        f"memory {bytes_text(split.memory_bytes)} = fixed {bytes_text(split.fixed_bytes)} "
        f"(params x{OPTIMIZER_FACTORS[split.optimizer]}, {split.optimizer}) "
        f"+ activation budget {bytes_text(split.activation_bytes)}"
    )


def device_line(console, device, memory, time_note=None):
    """The device a command runs for, whether --memory overrides its memory, and whose times are planned."""
    storage, compute = device.storage, device.compute
    console.print(
        f"device [bold]{escape(clean(device.name))}[/bold]: memory {bytes_text(device.memory_bytes)}"
        + (" (overridden by --memory)" if memory != device.memory_bytes else "")
        + (f", storage {storage_text(storage)}" if storage is not None else ", no storage")
        + (f", compute {compute.text()}" if compute is not None else "")
    )
    if time_note:
        console.print(f"time: {escape(time_note)}")


def plan_report(err, result):
    """What ``edgeplan solve`` says on stderr about a :class:`~planner.api.PlanResult`."""
    if result.device is not None:
        device_line(err, result.device, result.split.memory_bytes, result.time_note)
    if result.split.activation_bytes >= 0:
        header(err, result.model, result.split)
    for note in result.notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    if result.success:
        solution_line(err, result.solution, result.model)


def solution_line(console, solution, model):
    import json

    r = solution.result
    console.print(
        f"strategy [bold]{solution.strategy}[/bold] {escape(json.dumps(solution.params))}: "
        f"peak {bytes_text(r.peak_bytes)}, overhead {r.overhead:.1%}, {r.forwards} forwards"
        f"{escape(paging_text(r, model))}, {len(solution.ops)} ops, solved in {solution.solve_seconds:.2f} s"
    )
    energy = solution.schedule.predicted.get("energy_j")
    if energy is not None:
        console.print(f"energy: {joules_text(energy)} a step (predicted.energy_j)")


def progress(err, total, label):
    """A rich progress bar on stderr while strategies solve (terminals only), and its hook."""
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


def _short(text, limit=26):
    text = clean(" ".join(text.split()))
    return escape(text if len(text) <= limit else text[: limit - 3] + "...")


def _params_text(params):
    """A compare row's params, ``k=v``; milp's dual ``gap`` first (the column is short), as a percentage."""
    gap = params.get("gap")
    items = [f"gap={gap:.1%}"] if gap is not None else []
    return ", ".join(items + [f"{k}={v}" for k, v in params.items() if k != "gap"])


def compare_table(rows, width=124):
    """The rich table of ``edgeplan compare``: * marks the best feasible row.

    Narrow terminals drop the notes column (under 124 columns) and the exact
    byte counts (under 100); ``--json`` always has everything.
    """
    from rich import box

    from planner import solvers

    columns = (
        ("strategy", "left"), ("fits", "left"), ("peak", "right"), ("peak bytes", "right"),
        ("overhead", "right"), ("energy", "right"), ("forwards", "right"), ("solve time", "right"),
        ("params / notes", "left"),
    )
    joules = any("energy_j" in row for row in rows)  # the device has power figures
    keep = [(width >= 124 or col != "params / notes") and (joules or col != "energy") for col, _ in columns]
    keep = [k and (width >= 100 or col != "peak bytes") for k, (col, _) in zip(keep, columns)]
    table = Table(box=box.SIMPLE_HEAVY, header_style="bold", pad_edge=False)
    for (col, justify), k in zip(columns, keep):
        if k:
            table.add_column(col, justify=justify, no_wrap=True)

    def add(*cells, style=None):
        table.add_row(*(c for c, k in zip(cells, keep) if k), style=style)

    for row in rows:
        secs = f"{row['solve_seconds']:.3f} s"
        name = ("* " if row["best"] else "  ") + escape(row["strategy"])
        if row["feasible"]:
            params = _params_text(row["params"])
            if row.get("pageouts"):
                params = f"{row['pageouts']} out/{row['pageins']} in" + (", " + params if params else "")
            add(
                name, "yes", format_size(row["peak_bytes"]), f"{row['peak_bytes']:,}",
                f"{row['overhead']:.1%}", joules_text(row.get("energy_j")), str(row["forwards"]), secs,
                _short(params),
                style="bold green" if row["best"] else None,
            )
        elif row["least_memory_bytes"] is not None:
            add(
                name, "no", f"needs {format_size(row['least_memory_bytes'])}",
                f"{row['least_memory_bytes']:,}", "", "", "", secs, "least memory that works",
                style="dim",
            )
        else:
            strategy = solvers.STRATEGIES[row["strategy"]]
            note = "n/a: chains only" if not row["applicable"] and strategy.chains_only else _short(row["error"])
            add(name, "no", "", "", "", "", "", secs, note, style="dim")
    return table


def compare_report(out, model, split, rows, *, store_all, paging):
    """``edgeplan compare``'s text: the header, store-all's need, the table, the best row."""
    header(wide(out), model, split)
    out.print(
        f"store-all (no recomputation) peak {bytes_text(store_all)}: needs --memory "
        f"{bytes_text(split.memory_for(store_all))}"
    )
    out.print(compare_table(rows, out.width))
    best = next((row for row in rows if row["best"]), None)
    if best:
        out.print(
            f"* best: [bold]{escape(best['strategy'])}[/bold], {best['overhead']:.1%} extra compute "
            + ("and transfer " if paging else "")
            + (f"({joules_text(best['energy_j'])} a step) " if best.get("energy_j") is not None else "")
            + "(edgeplan solve --strategy auto picks it)"
        )
    else:
        least = [row["least_memory_bytes"] for row in rows if row["least_memory_bytes"] is not None]
        out.print(
            "[red]no strategy fits[/red]"
            + (f"; the least memory that works is {bytes_text(min(least))}" if least else "")
        )


def sweep_report(out, model, plan, points, *, names, best, energy=False):
    """``edgeplan sweep``'s text: the header, one row per size (``best[size]`` starred), the chart.

    With ``energy`` (``--objective energy``) the cells are joules and ``best`` the least of them.
    """
    from planner.plot import text_chart

    span, optimizer = plan.span, plan.optimizer
    model_line(wide(out), model)
    out.print(
        f"fixed memory {bytes_text(span.fixed_bytes)} (params x{OPTIMIZER_FACTORS[optimizer]}, {optimizer}); "
        f"store-all needs {bytes_text(span.store_all_memory_bytes)}; least that works "
        f"{bytes_text(span.least_memory_bytes)}"
    )
    table = Table(header_style="bold")
    table.add_column("memory", justify="right", no_wrap=True)
    for name in names:
        table.add_column(escape(name), justify="right", no_wrap=True)
    for size in plan.sizes:
        cells = []
        for p in (p for p in points if p.memory_bytes == size):
            value = p.energy_j if energy else p.overhead
            text = joules_text(value) if energy else f"{value:.1%}" if p.feasible else ""
            if not p.feasible:
                cells.append("[dim]- [/dim]")
            elif value == best[size]:
                cells.append(f"[bold green]{text}*[/bold green]")
            else:
                cells.append(f"{text} ")
        table.add_row(format_size(size), *cells)
    out.print(table)
    out.print(
        ("joules of a step (--objective energy)" if energy else
         "overhead = extra compute" + (" and transfer" if plan.storage is not None else "")
         + " over one forward and one backward per layer") + "; - = does not fit; * = best"
    )
    out.print(text_chart(points, store_all_memory=span.store_all_memory_bytes), markup=False)


def devices_report(out, devices):
    """``edgeplan devices``'s table and the source of each device's figures."""
    table = Table(header_style="bold")
    for col, justify in (("device", "left"), ("memory", "right"), ("read", "right"), ("read latency", "right"),
                         ("write", "right"), ("write latency", "right"), ("compute", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for d in devices:
        st = d.storage
        cells = ["-"] * 4 if st is None else [
            rate(st.read_bytes_per_s), seconds(st.read_latency_s),
            rate(st.write_bytes_per_s), seconds(st.write_latency_s),
        ]
        compute = "-" if d.compute is None else escape(d.compute.text())
        table.add_row(escape(d.name), format_size(d.memory_bytes), *cells, compute)
    wide(out).print(table)
    for d in devices:
        out.print(f"{escape(d.name)}: {escape(d.source)}")


def simulate_report(out, verdict, schedule_path, model):
    """``edgeplan simulate``'s text (the problems go to stderr separately)."""
    result, schedule = verdict.result, verdict.schedule
    out.print(f"schedule {escape(clean(schedule_path))}: {len(schedule.ops)} ops, strategy {escape(clean(schedule.strategy))}")
    out.print(
        f"peak {bytes_text(result.peak_bytes)}, compute {result.compute:.6g} "
        f"(baseline {result.baseline_compute:.6g}, overhead {result.overhead:.1%}), "
        f"{result.forwards} forwards{escape(paging_text(result, model))}"
        + (f", {joules_text(verdict.energy_j)} a step" if verdict.energy_j is not None else "")
    )
    if verdict.ok:
        out.print("[green]valid[/green]" + (" and fits" if verdict.split is not None else ""))


def problems(err, texts):
    """``invalid: ...``, one line per problem of a schedule."""
    for text in texts:
        err.print(f"[red]invalid:[/red] {escape(text)}")


def verify_report(out, r, schedule_path, strategy):
    """``edgeplan verify``'s text: one ``key: value`` line per measurement."""
    out.print(f"schedule {escape(clean(schedule_path))}: {r.n_ops} ops, strategy {escape(clean(strategy))}, on {r.device}")
    out.print(f"grads_match: {str(r.grads_match).lower()}")
    out.print(f"max_abs_diff: {r.max_abs_diff:.3g}")
    out.print(f"buffers_match: {str(r.buffers_match).lower()}")
    out.print(f"steps: {r.steps} (lr {r.lr:g}), max_param_diff: {r.max_param_diff:.3g}")
    out.print(f"measured_peak_bytes: {bytes_text(r.measured_peak_bytes)}")
    if r.predicted_peak_bytes is not None:
        out.print(f"predicted_peak_bytes: {bytes_text(r.predicted_peak_bytes)} (measured {r.relative_error:+.1%})")
    if r.budget_bytes is not None:
        out.print(f"budget_bytes: {bytes_text(r.budget_bytes)} (fits within 2%: {str(r.fits_budget).lower()})")
    out.print(f"plain autograd (store-all) measured: {bytes_text(r.reference_peak_bytes)}")
    overhead = "" if r.measured_overhead is None else f", overhead {r.measured_overhead:+.1%}"
    if r.predicted_overhead is not None:
        overhead += f" (predicted {r.predicted_overhead:+.1%})"
    out.print(f"step time: {r.step_seconds * 1000:.2f} ms scheduled, {r.reference_step_seconds * 1000:.2f} ms plain"
              f"{overhead}")
    if r.pageouts or r.pageins:
        predicted = "" if r.predicted_transfer_seconds is None else f", predicted {r.predicted_transfer_seconds * 1000:.2f} ms"
        out.print(f"transfer: {r.transfer_seconds * 1000:.2f} ms measured{predicted} "
                  f"({r.pageouts} pageouts, {r.pageins} pageins)")


def verify_problems(err, r):
    """The red lines of a failed ``edgeplan verify``, after its warnings."""
    for note in r.notes:
        err.print(f"[yellow]warning:[/yellow] {escape(clean(note))}")
    if not r.grads_match:
        err.print(f"[red]training differs from plain autograd[/red] (gradients {r.max_abs_diff:.3g}, "
                  f"parameters after {r.steps} steps {r.max_param_diff:.3g})")
    if r.fits_budget is False:
        err.print(f"[red]measured peak {r.measured_peak_bytes:,} bytes exceeds the schedule's budget of "
                  f"{r.budget_bytes:,} bytes by more than 2%[/red]")


def profile_line(err, doc, *, is_chain, loss_given):
    """The summary of a profiled model document, and a note when its loss is not modelled."""
    layers = doc["layers"]
    err.print(
        f"{_model_text(doc['name'], len(layers), is_chain)}, input "
        f"{bytes_text(doc['input_bytes'])}, activations {bytes_text(sum(l['output_bytes'] for l in layers))}, "
        f"params {bytes_text(sum(l['params_bytes'] for l in layers))}"
    )
    timing = doc.get("timing")
    if timing:
        spread = sorted(timing["spread"])
        err.print(
            f"times: median of {timing['rounds']} interleaved rounds, {timing['threads']} thread(s); spread "
            f"(interquartile / median) {100 * spread[len(spread) // 2]:.0f}% median, {100 * spread[-1]:.0f}% max"
        )
    if not loss_given:
        from planner.torch.profile import LOSS_NOT_MODELLED

        err.print(f"[yellow]note:[/yellow] {LOSS_NOT_MODELLED}")


def import_line(err, imported, file_path):
    """The summary of an imported model."""
    model = imported.model
    err.print(
        f"imported {escape(clean(file_path))} ({imported.source_format}): "
        f"{_model_text(model.name, len(model), model.is_chain, after_name=',')}, backward costs "
        + ("[yellow]estimated[/yellow]" if imported.estimated else "from the file")
    )
    if model.source:
        err.print(f"source: {escape(clean(model.source))}")
