"""Writing a benchmark's results into its own section of docs/benchmarks.md.

Besides :func:`write_section`, the pieces several benchmarks share: the
date stamp of a section (:func:`stamp`), a markdown table
(:func:`markdown_table`), and printing a section then writing it
(:func:`publish`).
"""

import datetime
import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(heading, text, path=DOC):
    """Replace (or append) the ``heading`` section of ``path`` with ``text``.

    ``heading`` is the section's ``## ...`` line; ``text`` is its body, with or
    without the heading.  Other sections are left as they are.
    """
    path = Path(path)
    body = text.strip()
    if body.startswith(heading):
        body = body[len(heading):].strip()
    block = heading + "\n\n" + body + "\n\n"
    current = path.read_text(encoding="utf-8") if path.exists() else "# edgeplan benchmarks\n"
    pattern = re.compile(r"^" + re.escape(heading) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        current = pattern.sub(lambda _: block, current)
    else:
        current = current.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(current.rstrip("\n") + "\n", encoding="utf-8")


def publish(heading, text, *, write, path=DOC):
    """Print ``text``; with ``write``, also make it the ``heading`` section of ``path``.

    Where it wrote is said on stderr, so that stdout holds the tables alone.
    """
    print(text)
    if write:
        write_section(heading, text, path)
        print(f"wrote the section to {path}", file=sys.stderr)


def stamp():
    """The time now, UTC, to the minute, as the benchmarks date their sections (``2026-12-01 12:14 UTC``)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def markdown_table(header, rows):
    """A markdown table: the column names ``header`` over ``rows``, each cell written with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)
