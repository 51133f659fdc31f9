"""Command lines built from a component's own ``component.yml``: one home for every default and range.

Flags are named exactly like the spec's inputs and outputs; types, enums, ``min``/``max``, defaults and help
text come from the spec, so a script never repeats them and the standalone command behaves like the step.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

_PATH_TYPES = ("uri_folder", "uri_file", "custom_model", "mlflow_model")


def parse_bool(text: str) -> bool:
    # Azure ML renders boolean inputs as True/False.
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def load_spec(spec_path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(spec_path.read_text(encoding="utf-8"))


def _typed(port: dict[str, Any], spec_name: str):
    kind = port["type"]
    if kind in _PATH_TYPES:
        return Path
    if kind == "boolean":
        return parse_bool
    convert = {"integer": int, "number": float, "string": str}[kind]
    low, high = port.get("min"), port.get("max")

    def bounded(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is outside [{low}, {high}] (see {spec_name})")
        return value

    bounded.__name__ = kind  # argparse names the type in its error messages
    return bounded


def spec_arg_parser(spec_path: Path, description: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser with one ``--name`` flag per input and output of the spec at ``spec_path``."""
    spec = load_spec(spec_path)
    parser = argparse.ArgumentParser(description=description or spec.get("description"))
    for name, port in spec.get("inputs", {}).items():
        parser.add_argument(
            f"--{name}",
            type=_typed(port, spec_path.name),
            choices=port.get("enum"),
            default=port.get("default"),
            required="default" not in port and not port.get("optional", False),
            help=port.get("description"),
        )
    for name, port in spec.get("outputs", {}).items():
        parser.add_argument(f"--{name}", type=Path, required=True, help=port.get("description"))
    return parser
