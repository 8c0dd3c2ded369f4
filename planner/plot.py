"""Drawing memory/overhead curves: a text chart for terminals, a PNG with matplotlib.

Both take the :class:`planner.sweep.SweepPoint` list of :func:`planner.sweep.sweep`:
memory (the whole step, fixed memory included) on x, recomputation overhead
on y, one curve per strategy, infeasible points left out.
"""


from planner.files import atomic_output
from planner.sizes import format_size

__all__ = ["MARKERS", "text_chart", "write_png"]

#: One character per strategy in the text chart, in order of appearance.
MARKERS = "o+x*#@%&=~"


def _series(points):
    """``{strategy: [(memory, overhead), ...]}`` for the feasible points, in order of appearance."""
    series = {}
    for p in points:
        series.setdefault(p.strategy, [])
        if p.feasible:
            series[p.strategy].append((p.memory_bytes, p.overhead))
    return series


def text_chart(points, *, width=60, height=14, store_all_memory=None):
    """A text chart of overhead against memory, for a terminal.

    Parameters
    ----------
    points : list of planner.sweep.SweepPoint
    width, height : int, keyword-only
        Plot area in characters (at least 10 x 4).
    store_all_memory : int or None, keyword-only
        Marks plain autograd's memory (overhead 0) with ``S``.

    Returns
    -------
    str
        Lines: the y axis in percent, the plot, the x axis with the memory
        at both ends, and a legend (``o store-all  + sequential ...``).  When
        two strategies land on the same cell the later one is drawn.

    Notes
    -----
    O(points + width x height).
    """
    width, height = max(width, 10), max(height, 4)
    series = _series(points)
    xs = [p.memory_bytes for p in points] + ([store_all_memory] if store_all_memory else [])
    if not xs:
        return "(no points)"
    x_lo, x_hi = min(xs), max(xs)
    ys = [y for pts in series.values() for _, y in pts]
    y_hi = max(ys, default=0.0)
    y_hi = y_hi if y_hi > 0 else 1.0
    grid = [[" "] * width for _ in range(height)]

    def cell(x, y):
        col = 0 if x_hi == x_lo else round((x - x_lo) / (x_hi - x_lo) * (width - 1))
        row = height - 1 - round(max(y, 0.0) / y_hi * (height - 1))
        return row, col

    legend = []
    for k, (name, pts) in enumerate(series.items()):
        mark = MARKERS[k % len(MARKERS)]
        legend.append(f"{mark} {name}" + ("" if pts else " (never fits)"))
        for x, y in pts:
            row, col = cell(x, y)
            grid[row][col] = mark
    if store_all_memory:
        row, col = cell(store_all_memory, 0.0)
        grid[row][col] = "S"
        legend.append("S store-all memory")
    labels = [f"{y_hi:.0%}", f"{y_hi / 2:.0%}", "0%"]
    label_width = max(len(s) for s in labels)
    lines = ["overhead (extra compute)"]
    for r, row in enumerate(grid):
        if r == 0:
            label = labels[0]
        elif r == (height - 1) // 2:
            label = labels[1]
        elif r == height - 1:
            label = labels[2]
        else:
            label = ""
        lines.append(f"{label:>{label_width}} |" + "".join(row))
    lines.append(" " * label_width + " +" + "-" * width)
    left, right = format_size(x_lo), format_size(x_hi)
    gap = max(1, width - len(left) - len(right))
    lines.append(" " * (label_width + 2) + left + " " * gap + right)
    lines.append(" " * (label_width + 2) + "memory (device, whole step)".center(width))
    lines.append("  ".join(legend))
    return "\n".join(lines)


def write_png(points, path, *, title="", store_all_memory=None, fixed_bytes=None):
    """Draw the curves into a PNG file with matplotlib (``pip install edgeplan[plot]``).

    Parameters
    ----------
    points : list of planner.sweep.SweepPoint
    path : str or os.PathLike
        Written atomically: a temporary file renamed into place.
    title : str, keyword-only
    store_all_memory : int or None, keyword-only
        Marks plain autograd (no recomputation) at that memory.
    fixed_bytes : int or None, keyword-only
        Mentioned in the x label (parameters x optimizer factor).

    Raises
    ------
    ImportError
        When matplotlib is missing, with the extra to install.

    Notes
    -----
    Uses the Agg canvas directly (no pyplot, no global backend switch), so it
    works without a display and leaves the caller's matplotlib state alone.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, PercentFormatter
    except ImportError:
        raise ImportError(
            "--plot needs matplotlib: pip install edgeplan[plot]"
        ) from None

    fig = Figure(figsize=(10, 5.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    styles = ["o-", "s-", "^-", "D-", "v-", "P-", "X-", "*-", "h-", "<-"]
    for k, (name, pts) in enumerate(_series(points).items()):
        if not pts:
            continue
        xs = [x / 1e6 for x, _ in pts]
        ys = [y * 100 for _, y in pts]
        ax.plot(xs, ys, styles[k % len(styles)], label=name, markersize=5, linewidth=1.5, alpha=0.85)
    if store_all_memory:
        ax.plot(
            [store_all_memory / 1e6], [0], marker="*", color="black", markersize=16,
            linestyle="none", label="store-all (no recomputation)", zorder=5,
        )
        ax.annotate(
            f"store-all\n{format_size(store_all_memory)}",
            (store_all_memory / 1e6, 0),
            textcoords="offset points", xytext=(-10, 18), ha="right", fontsize=8,
        )
    xlabel = "device memory for the step (MB)"
    if fixed_bytes:
        xlabel += f", including {format_size(fixed_bytes)} of parameters and optimizer state"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("recomputation overhead (% extra compute)")
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_ylim(bottom=min(0, ax.get_ylim()[0]) - 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="strategy")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_output(path, binary=True) as f:
        fig.savefig(f, format="png")
