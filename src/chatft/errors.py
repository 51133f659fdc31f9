"""One root for the project's errors, each carrying the exit code it maps to.

Library code raises; only entry points (a component's ``__main__``, a ``pipelines`` CLI) turn an error into an exit,
through ``exit_on_error``. Two codes: 2 for what the caller can fix (arguments, settings, input files), 1 for a
failure while doing the work (a server that would not start, a smoke test that failed, a service that said no).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ChatftError(Exception):
    """A failure with a message that says what, where and what to do; ``exit_code`` 1."""

    exit_code = 1


class UsageError(ChatftError):
    """Bad arguments, settings or input: the caller can fix it; ``exit_code`` 2."""

    exit_code = 2


def exit_on_error(prog: str, main: Callable[..., T], *args, **kwargs) -> T:
    """Run ``main``; a ``ChatftError`` becomes ``prog: message`` on stderr and a ``SystemExit`` with its exit code.

    Anything else is a bug and keeps its traceback.
    """
    try:
        return main(*args, **kwargs)
    except ChatftError as err:
        print(f"{prog}: {err}", file=sys.stderr, flush=True)
        raise SystemExit(err.exit_code) from None
