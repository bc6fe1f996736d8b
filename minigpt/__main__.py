"""`python -m minigpt ...` is the same as the `minigpt` command.

`python -m` puts the current folder first on sys.path. In a folder that holds a folder named minigpt
without __init__.py (the parent folder of a clone, say), Python's path search takes that folder for the
package, as an empty namespace package, before the import hook of an editable install
(`pip install -e .`) is asked. Only minigpt's own modules are then found, through the hook, and
`import minigpt` inside them gets the empty stand-in. The `minigpt` command never imports from the current
folder; here we do the same: forget the folder and the stand-in, then import the installed package.
"""
import os
import sys

if getattr(sys.modules.get("minigpt"), "__file__", None) is None:     # a folder stood in for the package
    sys.path[:] = [entry for entry in sys.path if entry not in ("", ".", os.getcwd())]
    del sys.modules["minigpt"]

from minigpt.cli import main  # noqa: E402  (after the fix above)

raise SystemExit(main())
