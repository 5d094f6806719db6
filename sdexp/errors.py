"""Errors a person can act on.

Anything raised as ``UserError`` is printed as one line (what, where, what to do) and the
process exits with code 2; a traceback is shown only with ``SDEXP_DEBUG=1`` or ``hydra.verbose``.
"""

from __future__ import annotations

import os
import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input the user can fix: a config value, a path, a data file."""


class ConfigError(UserError):
    """A composed config is invalid: unknown key, wrong type or out-of-range value."""


def debug_enabled() -> bool:
    return os.environ.get("SDEXP_DEBUG", "").lower() not in ("", "0", "false", "no")


def report_and_exit(err: BaseException, prefix: str = "sdexp: error") -> None:
    """Print ``err`` as one actionable line on stderr and exit 2 (traceback only in debug)."""
    if debug_enabled():
        import traceback

        traceback.print_exception(err)
    message = " ".join(str(err).split("\n")).strip() if not isinstance(err, UserError) else str(err)
    print(f"{prefix}: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
