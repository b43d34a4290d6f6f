"""The MiniCPM4 suite's top-level packages, and a check that their generic names are really ours.

The user chose generic import names for the packages (`runtime`, `agents`, `survey`, `mcp_tools`,
`tui`, `benchmarks`). Another installed distribution can own one of those names too; Python then
imports whichever comes first on sys.path and the failure shows up far away, as an AttributeError
or "No module named 'runtime.model'". This module turns that into one clear message.

Each of our packages sets `SUITE_PACKAGE = True` in its `__init__`. A package checks the packages it
depends on when it is imported (dependencies point one way: tui -> agents -> survey, mcp_tools ->
runtime), and the `minicpm` console script checks all of them before it imports anything else.
This module has a distinctive name so that it is not itself the thing that clashes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

PACKAGES = ("runtime", "mcp_tools", "survey", "agents", "tui", "benchmarks")


class ForeignPackageError(ImportError):
    """A top-level name of the suite resolves to a module of another distribution."""


def require_own_packages(*names: str) -> None:
    """Raise ForeignPackageError unless every name imports as one of the suite's own packages."""
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise ForeignPackageError(
                f"the package '{name}' of the MiniCPM suite is not installed; "
                "reinstall the suite with ./setup.sh (or pip install -e .)"
            )
        module = sys.modules.get(name) or importlib.import_module(name)
        if getattr(module, "SUITE_PACKAGE", False) is not True:
            where = getattr(module, "__file__", None) or spec.origin or "an unknown location"
            raise ForeignPackageError(
                f"'import {name}' found {where}, which is not the MiniCPM suite's '{name}' package: "
                f"another installed distribution owns the name '{name}'. Uninstall it "
                f"(`pip uninstall <its distribution>`) or install the suite in its own virtual "
                "environment with ./setup.sh."
            )


def main(argv: list[str] | None = None) -> int:
    """Console entry point `minicpm`: check the package names, then run the command line."""
    try:
        require_own_packages(*PACKAGES)
    except ForeignPackageError as exc:
        print(f"minicpm: error: {exc}", file=sys.stderr)
        return 2
    from tui.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
