"""What ``dp`` and ``dp-paging`` share: rotor's persistent class on a chain.

Not a strategy (the registry lists none here).  Both dynamic programs solve
``Solve(s, t)`` (reverse layers ``s..t`` given the checkpoint ``a[s-1]`` and
the gradient of ``a[t]``) over the same sizes, the same ``F_all`` option and
the same forward chains; ``dp-paging`` adds the ``F_pg`` option and a third
mode.  This module holds the chain's sizes with those formulas, the decision
trees (built from a table's choices, walked into ops) and the ``levels``
check.  The tables themselves differ (dp's is tuned for long chains, with no
paging), so each module keeps its own.

Decision trees: nodes in pre-order, ``("all", s, t, mode, child)`` or
``(kind, s, t, mode, split, right, left)`` with ``kind`` ``"ck"`` (``F_ck``)
or ``"pg"`` (``F_pg``, dp-paging only); children are node indices or -1.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from planner.errors import OptionError
from planner.schedule import backward, forward, pagein, pageout

__all__ = [
    "RELEASED",
    "PINNED",
    "PAGED",
    "ChainSizes",
    "chain_arrays",
    "build_tree",
    "tree_ops",
    "store_all_tree",
    "check_levels",
]

#: Modes of ``a[s-1]`` in a subproblem: freed after its last use inside, read
#: by the caller's backward (``needs_output``), or released and already in storage.
RELEASED, PINNED, PAGED = 0, 1, 2
_MAX_LEVELS = 10**6


@dataclass(frozen=True)
class ChainSizes:
    """Per-layer sizes in grid units (or bytes) and flags, as arrays."""

    o: np.ndarray  # output bytes
    sv: np.ndarray  # saved bytes
    wf: np.ndarray
    wb: np.ndarray
    ni: np.ndarray  # needs_inputs (bool)
    no: np.ndarray  # output in memory at its own backward: needs_output, or the sink

    @property
    def n(self):
        return len(self.o)

    def prev(self, s):
        """Size of the checkpoint ``a[s-1]`` (0 for the model input)."""
        return int(self.o[s - 1]) if s > 0 else 0

    def grad(self, t):
        """Gradient held when ``Solve(., t)`` starts (0 for the sink)."""
        return int(self.o[t]) if t < self.n - 1 else 0

    def held(self, s, mode):
        """Whether ``a[s-1]`` stays until ``backward(s)`` in ``F_all``."""
        return mode == PINNED or bool(self.ni[s])

    def sub_mode(self, s):
        """Mode of ``Solve(s + 1, t)`` inside ``F_all`` at ``s``."""
        return PINNED if self.no[s] else RELEASED

    def all_need(self, s, t, mode):
        """(peak of F_all's own forward and backward ops, what stays during ``Solve(s + 1, t)``)."""
        o, p = self.o, self.prev(s)
        h = p if self.held(s, mode) else 0
        need_f = p + self.grad(t) + o[s] + self.sv[s] + self.wf[s]
        need_b = h + self.sv[s] + (o[s] if self.no[s] else 0) + o[s] + p + self.wb[s]
        return int(max(need_f, need_b)), int(h + self.sv[s])

    def chain_peaks(self, s):
        """``Q[j]``: peak of ``forward(k, False)`` for ``k = s..s+j`` (without ``a[s-1]``, ``g_t``)."""
        o, wf = self.o, self.wf
        first = o[s] + wf[s]
        rest = o[s : self.n - 1] + o[s + 1 :] + wf[s + 1 :]
        return np.maximum.accumulate(np.concatenate(([first], rest)))

    def scaled(self, unit, rounding="up"):
        """Sizes in units of ``unit`` bytes, rounded up (``"up"``), to the nearest or down."""
        if rounding == "up":
            conv = lambda a: -(-a // unit)  # noqa: E731
        elif rounding == "nearest":
            conv = lambda a: (a + unit // 2) // unit  # noqa: E731
        else:
            conv = lambda a: a // unit  # noqa: E731
        return dataclasses.replace(self, o=conv(self.o), sv=conv(self.sv), wf=conv(self.wf), wb=conv(self.wb))


def chain_arrays(model, dtype):
    """The fields of :class:`ChainSizes` for ``model``, sizes as ``dtype`` arrays (a dict).

    Read from ``model.tables`` (:class:`planner.tables.Tables`); the short
    names are the recurrences' notation: ``o`` output bytes, ``sv`` saved
    bytes, ``wf``/``wb`` workspaces, ``ni`` needs_inputs, ``no``
    output_at_backward (the sink's output is in memory at its backward: the
    loss reads it, SPEC section 3).
    """
    t = model.tables
    sizes = (t.output_bytes, t.saved_bytes, t.workspace_forward, t.workspace_backward)
    o, sv, wf, wb = (np.array(a, dtype=dtype) for a in sizes)
    return dict(o=o, sv=sv, wf=wf, wb=wb, ni=t.needs_inputs.copy(), no=t.output_at_backward.copy())


def build_tree(z, choose, m=None):
    """The decision tree of ``Solve(0, n-1)`` in released mode, from a table's choices.

    ``choose(s, t, mode, m)`` names the option that attains ``Solve(s, t)`` in
    ``mode`` within ``m`` memory units: ``("all", None)``, ``("ck", split)`` or
    ``("pg", split)``.  ``m`` is None for tables without a memory axis; else
    each part gets what its caller leaves it (``F_all``'s ``Solve(s + 1, t)``
    runs on top of what stays, ``F_ck``'s right part on top of ``a[s-1]``).
    """
    tree = []
    stack = [(0, z.n - 1, RELEASED, m, None)]
    while stack:
        s, t, mode, mm, slot = stack.pop()
        x = len(tree)
        if slot is not None:
            slot[0][slot[1]] = x
        kind, split = choose(s, t, mode, mm)
        if kind == "all":
            node = ["all", s, t, mode, -1]
            tree.append(node)
            if s < t:
                sub = None if mm is None else mm - z.all_need(s, t, mode)[1]
                stack.append((s + 1, t, z.sub_mode(s), sub, (node, 4)))
            continue
        paged = kind == "pg"
        node = [kind, s, t, mode, split, -1, -1]
        tree.append(node)
        stack.append((s, split - 1, PAGED if paged else mode, mm, (node, 6)))
        right = mm if (mm is None or paged) else mm - z.prev(s)
        stack.append((split, t, RELEASED, right, (node, 5)))
    return [tuple(node) for node in tree]


def tree_ops(tree):
    """Forward, backward and paging ops of a decision tree, in execution order (iterative).

    ``F_pg`` pages ``a[s-1]`` out before its forwards (unless it is already in
    storage, mode paged) and in between its right and left parts.
    """
    ops = []
    stack = [0]  # node indices, and ops to emit when popped
    while stack:
        x = stack.pop()
        if type(x) is not int:
            ops.append(x)
            continue
        node = tree[x]
        if node[0] == "all":
            _, s, _t, _m, child = node
            ops.append(forward(s, True))
            stack.append(backward(s))
            if child >= 0:
                stack.append(child)
            continue
        kind, s, _t, mode, split, right, left = node
        if kind == "pg" and mode != PAGED:
            ops.append(pageout(s - 1))
        ops.extend(forward(k, False) for k in range(s, split))
        stack.append(left)
        if kind == "pg":
            stack.append(pagein(s - 1))
        stack.append(right)
    return ops


def store_all_tree(z):
    """F_all at every layer: the store-all schedule as a decision tree."""
    n = z.n
    return [
        ("all", s, n - 1, RELEASED if s == 0 else z.sub_mode(s - 1), s + 1 if s < n - 1 else -1)
        for s in range(n)
    ]


def check_levels(levels):
    """Raise OptionError unless ``levels`` is an integer in ``[2, 10**6]``."""
    if not isinstance(levels, int) or isinstance(levels, bool) or not 2 <= levels <= _MAX_LEVELS:
        raise OptionError(f"levels must be an integer >= 2 and <= {_MAX_LEVELS}, got {levels!r}")
