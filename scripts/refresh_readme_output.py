"""Re-run the commands pasted in README.md's "What it looks like" section and paste their output.

Usage::

    python scripts/refresh_readme_output.py

Run it after a change that alters what the commands print (a solver, a table), then review
``git diff README.md``.  The commands run in a temporary folder that sees ``examples/``.
"""

import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(block, folder):
    """The block's ``$ edgeplan ...`` lines, each followed by what it prints now."""
    out = []
    lines = block.split("\n")
    commands = [line for line in lines if line.startswith("$ edgeplan ")]
    show_exit = "$ echo $?" in block
    for command in commands:
        run = subprocess.run(
            shlex.split(command[2:]),
            cwd=folder,
            capture_output=True,
            text=True,
            env=dict(os.environ, COLUMNS="124"),
        )
        out.append(command)
        # solve prints its summary (stderr) before the file is written; the others print
        # their table (stdout) first, as a terminal interleaves them.
        solve = command.split()[2] == "solve"
        body = run.stderr + run.stdout if solve else run.stdout + run.stderr
        out.extend(line.rstrip() for line in body.rstrip("\n").split("\n"))
        if show_exit:
            out += ["$ echo $?", str(run.returncode)]
    return "\n".join(out)


def main():
    path = ROOT / "README.md"
    text = path.read_text(encoding="utf-8")
    start = text.index("## What it looks like")
    end = text.index("\n## ", start + 5)
    folder = tempfile.mkdtemp()
    os.symlink(ROOT / "examples", Path(folder) / "examples")

    def substitute(match):
        block = match.group(1)
        if not block.startswith("$ edgeplan "):
            return match.group(0)
        return "```\n" + render(block, folder) + "\n```"

    section = re.sub(r"```\n(.*?)\n```", substitute, text[start:end], flags=re.S)
    path.write_text(text[:start] + section + text[end:], encoding="utf-8")
    print(f"refreshed the pasted output in {path}")


if __name__ == "__main__":
    main()
