"""How the scheduler reports a failure: one line, without the data a database or provider error
quotes, and where in our code it was raised. Every step logs on the ``dispatch.scheduler``
logger."""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import unquote

from channels.masking import mask_text

log = logging.getLogger("dispatch.scheduler")

# What a database error appends after its message quotes row values and bound parameters.
_QUOTES_DATA = re.compile(
    r"\[SQL: |\[parameters: |\[SQL parameters hidden|\(Background on this error|\bDETAIL: "
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, fit for a log line or an error column: cut before the SQL
    statement, bound parameters or DETAIL a database error carries (they quote row values), with
    percent-encoded text decoded so that :func:`~channels.masking.mask_text` masks every phone
    number and email address, including those in a request URL a provider error repeats."""
    text = str(exc)
    found = _QUOTES_DATA.search(text)
    if found is not None:
        text = text[: found.start()]
    text = " ".join(unquote(_ANSI.sub("", text)).split())
    name = type(exc).__name__
    return f"{name}: {mask_text(text)}"[:limit] if text else name


def origin(exc: BaseException) -> str:
    """Where the exception was raised (file, line, function): no data, only code."""
    tb = exc.__traceback__
    if tb is None:
        return "unknown place"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name}"
