"""Writing a benchmark's results into its own section of docs/benchmarks.md."""

import re
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
