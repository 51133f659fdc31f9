"""Pipeline definition, run settings and the local / Azure ML backends (not shipped into components)."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("chatft") is None:
    # `python -m pipelines.<x>` from a checkout without the Makefile's PYTHONPATH: use the repo's src/.
    # (Component steps never import this package: they get chatft from their snapshot.)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
