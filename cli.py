"""The ``edgeplan`` command line: parse, call the planner, print.  The only place that exits.

Exit codes: 0 success; 1 a negative answer (no schedule fits, the schedule is
invalid or does not fit); 2 bad usage or a bad input file; 3 an internal error
(a bug in edgeplan, or out of memory), reported as one line without a traceback;
130 interrupted (Ctrl-C).
"""

import contextlib
import json
import sys

import click
from rich.console import Console
from rich.markup import escape

from planner import extras, render, report, solvers
from planner.cli_params import (
    device_option, dtype_option, example_options, example_spec, json_option, memory_option, objective_options,
    optimizer_option,
    quiet_torch, run_device_option, stages_option, strategies_option, target_argument, tuning_options,
    SIZE, sizes_option, import_options, measure_options, strategy_option, timeline_option, training_options,
    verify_files_options,
)
from planner import sweep as sweeping
from planner.api import plan
from planner.device import PRESETS, device_time, load_device
from planner.files import atomic_output
from planner.errors import EXIT_BAD, EXIT_INTERNAL, EXIT_NO, EdgeplanError, ModelMismatchError
from planner.model import load_model, model_from_dict
from planner.objective import objective_for
from planner.plot import write_png
from planner.schedule import load_schedule

__all__ = ["main"]

# The other codes are the exception classes' (planner.errors): an unexpected
# exception (a bug in edgeplan, or the machine running out of memory) is
# neither an answer (1) nor the user's fault (2): it gets EXIT_INTERNAL, one
# line on stderr, and no traceback.
EXIT_OK = 0


class _Group(click.Group):
    """The command group; turns any exception a command lets through into one line.

    Errors edgeplan raises on purpose keep their exit code (bad input 2,
    negative answer 1, with the answer's JSON fields when it has them);
    Ctrl-C exits 130; anything else exits :data:`EXIT_INTERNAL` with the
    exception's type and message.  click's own exits, usage errors and broken
    pipes pass through to click; under ``--json`` a usage error also writes
    ``{"error": ...}`` to stdout.
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
        except EdgeplanError as exc:  # each class says its exit code
            message = _internal_message(exc) if exc.exit_code == EXIT_INTERNAL else str(exc)
            fields = getattr(exc, "fields", {}) if exc.exit_code == EXIT_NO else {}
            _fail(_consoles(True)[1], message, exc.exit_code, **fields)
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


def _consoles(as_json):
    """(data console, people console): people's text goes to stderr under --json."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    out = err if as_json else Console(highlight=False, soft_wrap=True)
    return out, err


_JSON_KEY = "edgeplan.json"


def _json_error(message, **fields):
    """Under --json, the one document of a failed command: ``{"error": ..., **fields}``."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get(_JSON_KEY):
        sys.stdout.write(json.dumps({**fields, "error": message}, indent=2) + "\n")
        sys.stdout.flush()


def _fail(err, message, code, **fields):
    """One error line on stderr (and the JSON document under --json), then exit ``code``."""
    err.print(f"[red]error:[/red] {escape(render.clean(message))}")
    _json_error(message, **fields)
    sys.exit(code)


def _strategies(model, strategies, options, storage, err, *, named):
    """The strategies to run (``strategies``, or the applicable ones) less those missing a module."""
    names = strategies if named else solvers.applicable(model, options, storage=storage, include_missing=True)
    names, notes = report.available(names, named=named)
    for note in notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    return names


def _write_data(text, output, as_json, err):
    """``text`` to ``output`` (atomically) and, under --json or without ``output``, to stdout."""
    if output:
        with atomic_output(output) as f:
            f.write(text)
        err.print(f"wrote {escape(render.clean(output))}")
    if as_json or not output:
        sys.stdout.write(text)
        sys.stdout.flush()


def _device_memory(model, memory, device_name, err, *, need_memory=True, objective="time", time_budget=None):
    """(model in the device's seconds if it can be, memory or None, storage or None, the Objective), said on stderr."""
    model, memory, storage, device, note = report.device_memory(model, memory, device_name, need_memory=need_memory)
    goal = objective_for(model, device, objective, time_budget=time_budget)
    if device is not None:
        render.device_line(err, device, memory, note)
    return model, memory, storage, goal


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
@strategy_option
@optimizer_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the schedule to this file.")
@json_option
@objective_options
@tuning_options
def solve(model_path, memory, device_name, strategy, optimizer, output, as_json, objective, time_budget, options):
    """Find the best schedule for MODEL that fits --memory (or --device).

    Writes the schedule (edgeplan-schedule/1; /2 when it pages to the
    --device's storage) to -o FILE, or to stdout; a summary goes to stderr.

    \b
    Examples:
      edgeplan solve examples/resnet18.json --memory 256MB -o schedule.json
      edgeplan solve examples/resnet18.json --device jetson-tx2-8gb --memory 200MB -o schedule.json
      edgeplan solve examples/flop/resnet18.json --device cortex-m4f-sd --memory 200MB --objective energy

    With a device that has power figures the schedule predicts its joules
    (predicted.energy_j).
    """
    _, err = _consoles(True)
    result = plan(model_path, memory, strategy=strategy, optimizer=optimizer, device=device_name,
                  objective=objective, time_budget=time_budget, **options)
    render.plan_report(err, result)
    if not result.success:
        raise result.error
    if output:
        result.schedule.write(output, result.model)
        err.print(f"wrote {escape(output)}")
    if as_json or not output:
        sys.stdout.writelines(result.schedule.iter_json(result.model))
        sys.stdout.flush()


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@memory_option
@device_option
@optimizer_option
@strategies_option
@objective_options
@tuning_options
@json_option
def compare(model_path, memory, device_name, optimizer, strategies, objective, time_budget, options, as_json):
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
      edgeplan compare examples/flop/vgg16_bn.json --device cortex-m4f-sd --memory 200MB --objective energy

    With --objective energy the rows are ranked by joules; with a device
    that has power figures each row shows them.
    """
    out, err = _consoles(as_json)
    model = load_model(model_path)
    model, memory, storage, goal = _device_memory(model, memory, device_name, err, objective=objective,
                                                  time_budget=time_budget)
    solvers.check_options(model, strategies, options)
    split = report.check_memory(model, memory, optimizer)
    names = _strategies(model, strategies, options, storage, err, named=strategies is not None)
    store_all = solvers.solve(model, None, "store-all").result.peak_bytes
    display, hook = render.progress(err, len(names), "solving")
    with display:
        outcomes = solvers.run_all(model, split.activation_bytes, strategies=strategies, options=options,
                                   progress=hook, storage=storage, objective=goal)
    rows = report.compare_rows(outcomes, split, paging=storage is not None, objective=goal)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        render.compare_report(out, model, split, rows, store_all=store_all, paging=storage is not None)
    sys.exit(EXIT_OK if any(row["feasible"] for row in rows) else EXIT_NO)


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--from", "low", type=SIZE, help="Smallest memory (default: the least memory any strategy trains with).")
@click.option("--to", "high", type=SIZE, help="Largest memory (default: what store-all, plain autograd, needs).")
@sizes_option
@strategies_option
@optimizer_option
@tuning_options
@device_option
@objective_options
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also draw the curves into this PNG (pip install edgeplan[plot]).")
@json_option
def sweep(model_path, low, high, sizes, strategies, optimizer, options, device_name, objective, time_budget, plot_path,
          as_json):
    """Memory/overhead curve: every strategy at --sizes memory sizes.

    Sizes are device memory for the whole step (activations + fixed memory),
    evenly spread from --from to --to.  Prints a table and a text chart, or
    with --json a list of points (memory_bytes, strategy, feasible,
    overhead, peak_bytes); --plot FILE.png draws the curves with matplotlib.

    \b
    Examples:
      edgeplan sweep examples/mobilenet_v2.json
      edgeplan sweep examples/resnet18.json --from 180MB --to 280MB --sizes 6 --strategies dp,revolve,sequential
      edgeplan sweep examples/resnet18.json --json --plot resnet18.png
      edgeplan sweep examples/vgg16_bn.json --device jetson-tx2-8gb

    With --device, the device's storage adds the paging strategies and --to
    defaults to the device memory when that is less than store-all's.
    With --objective energy the paging strategies minimise joules, and
    --json points carry energy_j when the device has power figures.
    """
    out, err = _consoles(as_json)
    model = load_model(model_path)
    model, device_memory, storage, goal = _device_memory(model, None, device_name, err, need_memory=False,
                                                         objective=objective, time_budget=time_budget)
    if plot_path:
        extras.require("matplotlib", purpose="--plot")  # fail before the slow part, not after
    solvers.check_options(model, strategies, options)
    names = _strategies(model, strategies, options, storage, err, named=strategies is not None)
    span = sweeping.plan(model, low=low, high=high, steps=sizes, optimizer=optimizer, strategies=strategies,
                         options=options, storage=storage, device_memory=device_memory)
    display, hook = render.progress(err, len(span.sizes) * len(names), "sweeping")
    with display:
        points = sweeping.sweep(model, span.sizes, optimizer=optimizer, strategies=strategies, options=options,
                                progress=hook, shared=span.shared, storage=storage, objective=goal)
    if plot_path:
        _plot(points, plot_path, model, span)
    if as_json:
        sys.stdout.write(json.dumps([p.to_dict() for p in points], indent=2) + "\n")
    else:
        energy = goal.kind == "energy"
        render.sweep_report(out, model, span, points, names=names, energy=energy,
                            best=sweeping.best_overheads(points, "energy_j" if energy else "overhead"))
        out.file.flush()
    if plot_path:
        err.print(f"wrote {escape(render.clean(plot_path))}")


def _plot(points, plot_path, model, plan):
    write_png(points, plot_path, title=f"{model.name}: recomputation overhead against memory ({plan.optimizer})",
              store_all_memory=plan.span.store_all_memory_bytes, fixed_bytes=plan.span.fixed_bytes)


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
    out, _ = _consoles(as_json)
    if as_json:
        sys.stdout.write(json.dumps([d.to_dict() for d in PRESETS.values()], indent=2) + "\n")
    else:
        render.devices_report(out, list(PRESETS.values()))


@main.command(name="simulate")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("schedule_path", metavar="SCHEDULE", type=click.Path(dir_okay=False))
@click.option("--memory", "-m", type=SIZE, help="Also check that the schedule fits this device memory.")
@optimizer_option
@click.option(
    "--exit-zero", is_flag=True,
    help="Report problems but exit 0 (bad input files still exit 2): for CI steps that only warn.",
)
@timeline_option
@click.option("--device", "device_name", metavar="NAME|FILE", help="Replay in this device's seconds (its compute speed).")
@json_option
def simulate_cmd(model_path, schedule_path, memory, optimizer, exit_zero, timeline_path, device_name, as_json):
    """Replay SCHEDULE on MODEL and validate it (the rules of docs/format.md, paging included).

    Exits 1 when the schedule is invalid, was made for another model
    (fingerprint), or does not fit --memory; 0 otherwise (always 0 with
    --exit-zero).  A CI gate: regenerate nothing, just check.  An
    edgeplan-schedule/2 or /3 is replayed with the storage it names.

    \b
    Example:
      edgeplan simulate examples/resnet18.json schedule.json --memory 256MB
      edgeplan simulate examples/resnet18.json schedule.json --timeline memory.csv
    """
    out, err = _consoles(as_json)
    model = load_model(model_path)
    if device_name is not None:  # a model timed in FLOPs pages only in a device's seconds
        model, note = device_time(model, load_device(device_name))
        err.print(f"time: {escape(note)}")
    try:
        schedule = load_schedule(schedule_path, model)
    except ModelMismatchError as exc:
        _fail(err, str(exc), EXIT_OK if exit_zero else EXIT_NO, **report.mismatch_fields(exc))
    verdict = report.check_schedule(model, schedule, memory=memory, optimizer=optimizer,
                                    timeline=timeline_path is not None)
    if timeline_path is not None:
        _write_data(report.timeline_csv(model, schedule.ops, verdict.result.timeline), timeline_path, False, err)
    if as_json:
        sys.stdout.write(json.dumps(verdict.to_dict(), indent=2) + "\n")
    else:
        render.simulate_report(out, verdict, schedule_path, model)
    render.problems(err, verdict.problems)
    sys.exit(EXIT_OK if verdict.ok or exit_zero else EXIT_NO)


@main.command()
@target_argument
@example_options
@dtype_option
@stages_option
@measure_options
@run_device_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the model file here.")
@json_option
def profile(target, inputs, example, loss, output_field, dtype, stages, estimate, repeats, threads, name, device,
            output, as_json):
    """Profile a PyTorch model into a model file (edgeplan-model/1).

    TARGET is path/to/file.py:factory or package.module:factory; the factory
    returns an nn.Module (an nn.Sequential or a list of modules profiles as a
    chain of stages; any other module is captured with torch.export, or the
    torch.fx tracer where that fails, see docs/pytorch.md), such as a Hugging
    Face transformers model as it comes.  Each stage runs on its real inputs: times, output and
    saved sizes, workspaces.  With --loss the loss is the model's last layer.
    This imports and runs TARGET's code, and only that.  Needs PyTorch: pip
    install edgeplan[torch].

    \b
    Examples:
      edgeplan profile examples/tiny_cnn.py:tiny_cnn --input 8,3,32,32 -o tiny_cnn.json
      edgeplan profile gpt.py:gpt --input 4x128:int64:5000 --loss cross_entropy -o gpt.json
      edgeplan profile examples/hf_gpt2.py:build --example examples/hf_gpt2.py:batch --loss output
    """
    extras.require("torch", purpose="edgeplan profile")
    quiet_torch()
    from planner.torch.profile import profile_target

    spec = example_spec(inputs, example)
    _, err = _consoles(True)
    with contextlib.redirect_stdout(sys.stderr):  # what user code prints is not data
        doc = profile_target(target, spec, dtype=dtype, stages=stages, estimate=estimate, repeats=repeats,
                             threads=threads, device=device, loss=loss, output=output_field,
                             **({"name": name} if name else {}))
    render.profile_line(err, doc, is_chain=model_from_dict(doc).is_chain, loss_given=loss is not None)
    _write_data(json.dumps(doc, indent=2) + "\n", output, as_json, err)


@main.command()
@target_argument
@example_options
@verify_files_options
@dtype_option
@stages_option
@run_device_option
@training_options
@timeline_option
@json_option
def verify(target, inputs, example, loss, output_field, schedule_path, model_path, dtype, stages, device, seed,
           steps, lr, timeline_path, as_json):
    """Train with SCHEDULE on the real model and compare with plain autograd.

    Runs --steps SGD steps twice from the same start, inputs and seed: under
    the training executor running the schedule's ops (forward with or
    without save, backward, free) on TARGET's stages, and under plain
    autograd.  A model with a loss (--loss, or the model file's) runs it on
    the target.  Compares the first step's parameter gradients, the buffers
    and the final parameters (within 1e-5 for float32), and reports the
    measured peak of a step (allocator) and the mean step time of each run.
    Exits 0 when they match and the measured peak is within 2% of the budget
    the schedule was planned for (budget_bytes), 1 otherwise.  --timeline
    writes the predicted and the measured memory at each op (measured on
    the CPU only).  Imports and runs TARGET's code, and only that.  Needs
    PyTorch: pip install edgeplan[torch].

    \b
    Example:
      edgeplan verify examples/tiny_cnn.py:tiny_cnn --input 8,3,32,32 \\
          --schedule schedule.json --model tiny_cnn.json --steps 5
    """
    extras.require("torch", purpose="edgeplan verify")
    quiet_torch()
    from planner.torch.prepare import check_and_run, target_and_model

    spec = example_spec(inputs, example)
    out, err = _consoles(as_json)
    with contextlib.redirect_stdout(sys.stderr):  # what user code prints is not data
        obj, model, loss = target_and_model(target, spec, model_path=model_path, loss=loss, dtype=dtype,
                                            stages=stages, seed=seed, output=output_field)
    schedule = load_schedule(schedule_path, model)
    with contextlib.redirect_stdout(sys.stderr):
        r = check_and_run(obj, spec, schedule, model, schedule_path=schedule_path, model_path=model_path,
                          loss=loss, dtype=dtype, stages=stages, device=device, seed=seed, steps=steps, lr=lr,
                          timeline=timeline_path is not None)
    if timeline_path is not None:
        csv_text = report.timeline_csv(model, schedule.ops, r.predicted_op_peaks, measured=r.op_peaks or [],
                                       measured_seconds=r.op_seconds or [])
        _write_data(csv_text, timeline_path, False, err)
    if as_json:
        sys.stdout.write(json.dumps(r.to_dict(), indent=2) + "\n")
    else:
        render.verify_report(out, r, schedule_path, schedule.strategy)
    render.verify_problems(err, r)
    sys.exit(EXIT_OK if r.ok else EXIT_NO)


@main.command(name="import")
@click.argument("file_path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the model file (edgeplan-model/1) here.")
@import_options
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
    imported = import_file(file_path, source_format=source_format, input_shapes=dict(inputs) or None)
    render.import_line(err, imported, file_path)
    _write_data(json.dumps(imported.document, indent=2, ensure_ascii=False) + "\n", output, as_json, err)


if __name__ == "__main__":  # pragma: no cover
    main()
