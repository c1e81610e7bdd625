"""Makes the folder of every package pyproject.toml lists, empty: the Docker builds install
the dependencies from pyproject.toml alone, before the source comes, so that a code change
does not reinstall them; a new subpackage needs no change to the Dockerfiles.

    python package_dirs.py pyproject.toml

Standard library only: it runs on the image's bare Python before anything is installed.
"""

from __future__ import annotations

import os
import sys
import tomllib


def package_dirs(pyproject: dict) -> list[str]:
    """Each listed package's folder under setuptools' package-dir (the longest mapped prefix
    of its name wins; a name no prefix maps sits at its dotted path from the root)."""
    setuptools = pyproject["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools.get("package-dir", {})
    folders = []
    for package in setuptools["packages"]:
        parts = package.split(".")
        for cut in range(len(parts), -1, -1):
            prefix = ".".join(parts[:cut])
            if prefix in mapping or cut == 0:
                base = [mapping[prefix]] if prefix in mapping else []
                folders.append("/".join(base + parts[cut:]))
                break
    return folders


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as file:
        for folder in package_dirs(tomllib.load(file)):
            os.makedirs(folder, exist_ok=True)
