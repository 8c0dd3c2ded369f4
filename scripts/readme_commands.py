"""Print README.md's two commands: the quick start and the test command.

They are the first two code blocks of the "## Quick start" section, one line
each.  ``.ci/run`` runs what this prints, so the README and CI cannot drift
apart; anything else in the section's layout is an error, loudly.

Usage: python3 scripts/readme_commands.py [README.md]
"""

import re
import sys
from pathlib import Path

__all__ = ["quick_start_commands"]


def quick_start_commands(text):
    """(quick start, test command) from the README's text.

    Raises
    ------
    ValueError
        No "## Quick start" section, fewer than two code blocks in it, or a
        block that is not exactly one command line.
    """
    match = re.search(r"^## Quick start\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    if not match:
        raise ValueError("README.md has no '## Quick start' section")
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", match.group(1), flags=re.S | re.M)
    if len(blocks) < 2:
        raise ValueError(f"README.md's Quick start has {len(blocks)} code block(s); expected the two commands")
    commands = []
    for block in blocks[:2]:
        lines = [line for line in block.splitlines() if line.strip()]
        if len(lines) != 1:
            raise ValueError(f"a Quick start command block must hold exactly one line, got {block!r}")
        commands.append(lines[0].strip())
    return tuple(commands)


def main(argv):
    path = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parents[1] / "README.md")
    try:
        commands = quick_start_commands(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"readme_commands: {path}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(commands))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
