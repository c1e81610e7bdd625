"""The `embedsense-server` command (and `python -m embedsense.server`): the server's program
once its dependencies are importable. The base install is the client alone, yet it has this
command too; there, a missing dependency is one line that says what to install, not an
ImportError's traceback."""

from __future__ import annotations

import sys

INSTALL_HINT = "the server needs the `server` extra (from the repository: pip install '.[server]')"


def main() -> int:
    try:
        from embedsense.server.cli import main as serve
    except ModuleNotFoundError as err:
        missing = (err.name or "").partition(".")[0]
        if not missing or missing == "embedsense":  # our own module: a defect, not an install
            raise
        print(f"embedsense-server: cannot start: {missing} is not installed: {INSTALL_HINT}",
              file=sys.stderr)  # fmt: skip
        return 2
    return serve()
