"""A component's command with its inputs and outputs filled in, rendered the way Azure ML renders it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from pipelines.local.results import LocalRunError

_INPUT_REF = re.compile(r"\$\{\{\s*inputs\.(\w+)\s*\}\}")
_OUTPUT_REF = re.compile(r"\$\{\{\s*outputs\.(\w+)\s*\}\}")
_OPTIONAL_BLOCK = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)


def _render(value: Any) -> str:
    # Azure ML renders booleans as True/False; keep the same so scripts parse one form.
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def resolve_command(
    command: str, inputs: dict[str, Any], outputs: dict[str, Path], path_inputs: frozenset[str] = frozenset()
) -> str:
    """Substitute inputs/outputs into a component command; drop ``$[[...]]`` blocks whose inputs are unset.

    Literal values are substituted raw, exactly as Azure ML does, so a spec that needs quoting (a value
    with spaces or glob characters) must quote it itself and behaves the same on both backends. Local
    paths are quoted: Azure's mount paths have no spaces, but a user's project folder may.
    """

    def optional_block(match: re.Match) -> str:
        names = _INPUT_REF.findall(match.group(1))
        return match.group(1) if all(inputs.get(n) is not None for n in names) else ""

    command = _OPTIONAL_BLOCK.sub(optional_block, command)

    def input_value(match: re.Match) -> str:
        name = match.group(1)
        if inputs.get(name) is None:
            raise LocalRunError(f"command uses inputs.{name}, which has no value and no default")
        text = _render(inputs[name])
        return shlex.quote(text) if name in path_inputs else text

    command = _INPUT_REF.sub(input_value, command)
    return _OUTPUT_REF.sub(lambda m: shlex.quote(str(outputs[m.group(1)])), command)
