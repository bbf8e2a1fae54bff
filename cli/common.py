"""What every `nps-dispatch` command shares: the consoles, the help format, the runtime checks
that refuse to start without a secret or a broker, and argument types."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rich.console import Console

from config.settings import Settings

if TYPE_CHECKING:
    from wiring.runtime import Runtime

console = Console()
err_console = Console(stderr=True)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, unless it has none or already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if (
            "default" in help_text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return help_text
        return help_text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose help shows the defaults (sub-commands inherit it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def runtime_with_key() -> Runtime | None:
    """The process's runtime, or ``None`` (after saying why) without ``NPS_SECRET_KEY``.

    Customer ids outside the customer row are stored as pseudonyms keyed by it (ledger, dead
    letters, tombstones); written under a throw-away key, they could never be found again by an
    erasure or an export. Only `demo` runs without it."""
    from wiring.runtime import get_runtime

    runtime = get_runtime()
    if not runtime.settings.secret_key:
        err_console.print(
            "NPS_SECRET_KEY is not set: customer ids are stored keyed by it, and without it "
            "erasure and export could not find them again."
        )
        return None
    return runtime


def require_broker(settings: Settings) -> bool:
    if not settings.broker_url:
        err_console.print("NPS_BROKER_URL is not set: this process needs Redis (redis://...).")
        return False
    return True


def seconds(text: str) -> float:
    """A positive number of seconds (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of at least 0 (an argparse type)."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 0, not {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    """A whole number of at least 1 (an argparse type)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)
