"""The click parameter types and options that the ``edgeplan`` commands share (cli.py).

Each option is declared once here, with its help text; parsing only: what an
option means is the library's business.
"""

import click

from planner import solvers
from planner.budget import OPTIMIZER_FACTORS
from planner.objective import OBJECTIVES
from planner.sizes import SizeError, parse_size

__all__ = [
    "SIZE", "SizeType", "InputType", "NamedShapeType", "optimizer_option", "json_option", "device_option",
    "memory_option", "strategies_option", "tuning_options", "example_options", "example_spec", "quiet_torch",
    "target_argument", "dtype_option", "stages_option", "run_device_option", "renamed_option", "sizes_option", "strategy_option",
    "verify_files_options", "training_options", "measure_options", "import_options", "objective_options",
]


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


def strategy_list(ctx, param, value):
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
    callback=strategy_list,
    help="Only these strategies, comma-separated (default: every applicable one).",
)


def tuning_options(fn):
    """One flag per strategy option of the registry (``solvers.OPTIONS``), collected into ``options``."""
    def collect(ctx, param, value):
        ctx.params.setdefault("options", dict.fromkeys(solvers.OPTIONS))[param.name] = value

    for option in reversed(list(solvers.OPTIONS.values())):
        if option.kind is int:
            kind = click.IntRange(min=option.low, min_open=option.low_open)
        else:
            kind = click.FloatRange(min=option.low, min_open=option.low_open)
        fn = click.option(option.flag, option.name, type=kind, metavar=option.metavar, callback=collect,
                          expose_value=False, help=option.help)(fn)
    return fn


class InputType(click.ParamType):
    """SHAPE[:DTYPE[:HIGH]]: one model input (4x128:int64:5000; 8,3,224,224)."""

    name = "SHAPE[:DTYPE[:HIGH]]"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        from planner.torch.inputs import parse_input

        try:
            return parse_input(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def example_options(fn):
    """--input (repeatable), --example, --loss and --output-field: what profile and verify run the model on."""
    fn = click.option(
        "--output-field", "output_field", metavar="NAME|INDEX",
        help="The field (or index) of the model's result the loss reads, when it returns a dict, "
        "tuple, dataclass or ModelOutput. Default: its logits, else its one tensor. verify: "
        "default, the model file's.",
    )(fn)
    fn = click.option(
        "--loss", metavar="cross_entropy|mse|sum|output|FILE.py:FUNC",
        help="Put the loss in the model as its last layer, measured on the target: cross_entropy "
        "(over the last dimension), mse, sum (no target), FUNC(output, target), or output: the "
        "model's own loss field (labels in the example's kwargs). verify: default, the model file's.",
    )(fn)
    fn = click.option(
        "--example", metavar="FILE.py:FUNC",
        help="FUNC() returns (inputs, target), (kwargs, target) or kwargs: a tensor, a tuple of "
        "tensors or a dict of keyword arguments, and a tensor or None.",
    )(fn)
    return click.option(
        "--input", "inputs", type=InputType(), multiple=True,
        help="One input, batch first: SHAPE[:DTYPE[:HIGH]], e.g. 8,3,224,224 or 4x128:int64:5000 "
        "(integers drawn in [0, HIGH), floats from a normal distribution). Repeat for several "
        "inputs, passed in order.",
    )(fn)


def example_spec(inputs, example):
    """``--example`` or the ``--input`` specs; exactly one of them (usage error otherwise)."""
    if inputs and example:
        raise click.UsageError("give --input or --example, not both")
    if not inputs and not example:
        raise click.UsageError("give the model's inputs: --input SHAPE[:DTYPE[:HIGH]] or --example FILE.py:FUNC")
    return example or list(inputs)


def quiet_torch():
    """Keep PyTorch's C++ log lines (allocator notes while profiling) off stderr."""
    import os

    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")


target_argument = click.argument("target", metavar="TARGET")
dtype_option = click.option(
    "--dtype", type=click.Choice(["float32", "float64", "float16", "bfloat16"]),
    default="float32", show_default=True, help="Data type the model runs in.",
)
stages_option = click.option(
    "--stages", type=click.Choice(["auto", "modules", "ops"]), default="auto", show_default=True,
    help="modules: a layer per child of an nn.Sequential, or per block of any other model (the "
    "items of its ModuleLists, such as transformer.h.0; its children when it has none) and per op "
    "between them; ops: a layer per op that torch.export captures; auto: modules for a "
    "Sequential, ops otherwise (docs/costs.md).",
)
def renamed_option(new, old, dest, *, default, help, **kwargs):
    """Option ``new``, with ``old`` kept one release as a deprecated spelling (a line on stderr).

    Both fill ``dest``; ``new`` wins when both are given.
    """
    def from_new(ctx, param, value):
        return ctx.params.get(dest, default) if value is None else value

    def from_old(ctx, param, value):
        if value is None:
            return
        click.echo(f"warning: {old} is deprecated in 'edgeplan {ctx.info_name}': use {new} (the old "
                   "spelling goes in the next release)", err=True)
        if ctx.params.get(dest) is None or ctx.params.get(dest) == default:
            ctx.params[dest] = value

    def decorate(fn):
        fn = click.option(old, f"{dest}_deprecated", callback=from_old, expose_value=False, hidden=True,
                          help=f"Deprecated: use {new}.", **kwargs)(fn)
        return click.option(new, dest, callback=from_new, help=f"{help}  [default: {default}]", **kwargs)(fn)

    return decorate


run_device_option = renamed_option(
    "--on", "--device", "device", type=click.Choice(["cpu", "cuda"]), default="cpu",
    help="Where to run the model (--device, its old name, is deprecated: --device names a device preset "
    "in solve, compare and sweep).",
)
sizes_option = renamed_option(
    "--sizes", "--steps", "sizes", type=click.IntRange(min=2, max=1000), default=12,
    help="Number of memory sizes (--steps, its old name, is deprecated: --steps counts training steps in verify).",
)


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


timeline_option = click.option(
    "--timeline", "timeline_path", type=click.Path(dir_okay=False), metavar="FILE.csv",
    help="Also write the memory at each op as CSV (index, op, layer, bytes), to plot or to find the peak.",
)

strategy_option = click.option(
    "--strategy",
    "-s",
    type=click.Choice(solvers.strategy_names()),
    default="auto",
    show_default=True,
    help="Which solver; auto tries every applicable one and keeps the fastest (with --objective energy, "
    "the least joules).",
)


def objective_options(fn):
    """--objective and --time-budget: what the paging strategies minimise, and the most a step may take."""
    fn = click.option(
        "--time-budget", "time_budget", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
        help="The most seconds a step may take on the device (its predicted step time, transfers included); "
        "a schedule above it is refused like one above the memory.",
    )(fn)
    return click.option(
        "--objective", type=click.Choice(OBJECTIVES), default="time", show_default=True,
        help="What the paging strategies minimise within the memory (and auto ranks by): the step's time, or "
        "its energy in joules (needs --device with compute.power_w and storage.transfer_power_w).",
    )(fn)


def verify_files_options(fn):
    """--schedule and --model: what verify runs and the model it was made for."""
    fn = click.option("--model", "model_path", type=click.Path(dir_okay=False),
                      help="The model file the schedule was made for (checks the fingerprint and predicts the peak).")(fn)
    fn = click.option("--schedule", "schedule_path", type=click.Path(dir_okay=False), required=True,
                      help="The schedule to run (edgeplan-schedule/1).")(fn)
    return fn


def training_options(fn):
    """--seed, --steps, --lr: the SGD steps verify trains with."""
    fn = click.option("--lr", type=click.FloatRange(min=0.0), default=0.01, show_default=True,
                      help="Learning rate of those steps.")(fn)
    fn = click.option("--steps", type=click.IntRange(1, 10000), default=1, show_default=True,
                      help="SGD steps per run (plain autograd, then the schedule), from the same start.")(fn)
    fn = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the input and the RNG.")(fn)
    return fn


def measure_options(fn):
    """--estimate, --repeats, --threads, --name: how profile measures and names the model."""
    fn = click.option("--name", help="Model name (default: the factory's name).")(fn)
    fn = click.option("--threads", type=click.IntRange(1, 1024),
                      help="Threads torch computes with while timing (default: torch's own setting).")(fn)
    fn = click.option("--repeats", type=click.IntRange(1, 100), default=5, show_default=True,
                      help="Timed rounds, each running every stage once; a stage keeps its median.")(fn)
    fn = click.option("--estimate", is_flag=True,
                      help="Count FLOPs on fake tensors instead of running (FakeTensorMode).")(fn)
    return fn


def import_options(fn):
    """--from and --input: the format of an imported file and its input shapes."""
    fn = click.option(
        "--input", "inputs", type=NamedShapeType(), multiple=True,
        help="onnx: the shape of a graph input whose shape is not fixed in the file (repeatable).",
    )(fn)
    fn = click.option(
        "--from", "source_format", type=click.Choice(["checkmate", "onnx"]),
        help="The format of FILE (default: from its extension: .onnx is onnx, .json is checkmate).",
    )(fn)
    return fn
