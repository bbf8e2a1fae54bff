"""Keeping secrets and personal data out of log lines: the configured secrets and credentials
masked in every rendered line, dramatiq's message arguments hidden, and uvicorn's access line
stripped of answer tokens, credential-like query parameters and the full client address."""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import quote, urlsplit

import dramatiq
from dramatiq.broker import MessageProxy

from channels.masking import mask_answer_links, mask_log_text

#: Shorter values would mask ordinary words; every real secret is longer.
MIN_SECRET_LENGTH = 8
ACCESS_LOGGER = "uvicorn.access"

_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|PRIVATE_KEY")
_SECRET_PREFIXES = ("NPS_", "TWILIO_", "SENDGRID_", "SHOPIFY_", "WOOCOMMERCE_")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=-]{8,}")
_URL_PASSWORD = re.compile(r"(://[^/\s@:]*:)[^/\s@]+@")


def secrets_from_env(env: Mapping[str, str]) -> tuple[str, ...]:
    """Values never to be logged: the secret variables of this product and the providers, and
    the password of any ``..._URL`` among them (database, Redis)."""
    found: set[str] = set()
    for name, value in env.items():
        if not name.startswith(_SECRET_PREFIXES) or not value:
            continue
        if _SECRET_NAME.search(name) and "PUBLIC" not in name:
            found.add(value)
        if name.endswith("_URL"):
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.add(password)
    variants = {form for value in found for form in (value, quote(value, safe=""))}
    return tuple(
        sorted((v for v in variants if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)
    )


class Redactor:
    """Text as it may be logged: configured secrets, credentials, contacts and tokens masked."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(sorted(set(secrets), key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[secret]")
        text = mask_log_text(text)
        lowered = text.lower()
        if "bearer" in lowered or "basic" in lowered or "token" in lowered:
            text = _AUTH_SCHEME.sub(r"\1\2[secret]", text)
        if "://" in text:
            text = _URL_PASSWORD.sub(r"\1[secret]@", text)
        return text


class _Shown:
    """A log argument replaced by a safe description of it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


_MESSAGE_TYPES = (dramatiq.Message, MessageProxy)


def _safe_argument(value: object) -> object:
    if isinstance(value, _MESSAGE_TYPES):
        return _Shown(f"{value.actor_name}[{value.message_id}]")
    return value


# dramatiq's actor (at DEBUG, on a logger named after the actor's module) logs its arguments.
_ACTOR_CALL = "Received args=%r kwargs=%r."


def _hide_arguments(record: logging.LogRecord) -> None:
    """Replace arguments that would render personal data, before the message is formatted."""
    if record.msg == _ACTOR_CALL and isinstance(record.args, tuple) and len(record.args) == 2:
        args, kwargs = record.args
        record.args = (
            _Shown(f"[{len(args) if isinstance(args, tuple) else '?'} hidden]"),
            _Shown(f"[{len(kwargs) if isinstance(kwargs, Mapping) else '?'} hidden]"),
        )
        return
    if record.name.startswith("sqlalchemy.engine") and isinstance(record.msg, str):
        # Result rows are logged at DEBUG whatever hide_parameters says; parameters at INFO
        # when an engine was made without it.
        if record.msg.endswith("Row %r"):
            record.args = (_Shown("[row hidden]"),)
            return
        if record.msg.endswith("] %r") and isinstance(record.args, tuple) and record.args:
            record.args = (*record.args[:-1], _Shown("[parameters hidden]"))
            return
    record.msg = _safe_argument(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_safe_argument(arg) for arg in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {key: _safe_argument(arg) for key, arg in record.args.items()}


_EXCEPTION_FORMATTER = logging.Formatter()


class RedactingFilter(logging.Filter):
    """The last line of defence, on the root handler: renders the message and the traceback
    once, masked, into the record, so that no handler can render the raw arguments again."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        _hide_arguments(record)
        try:
            message = record.getMessage()
        except Exception:  # a broken format must not break the caller, nor print its arguments
            message = f"{record.msg} [log arguments did not fit the format]"
        record.msg = self.redact(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def _masked_client(client: str) -> str:
    """``203.0.113.7:51234`` -> ``203.0.113.0``: enough to see a network, not a person.

    An IPv4 address with its port is masked by splitting the string: parsing it with
    ``ipaddress`` was the costliest part of each access line. Nothing is kept between calls (a
    cache would hold the unmasked addresses of recent clients for the life of the process)."""
    host, _, port = client.rpartition(":")
    if port.isdigit():
        octets = host.split(".")
        if len(octets) == 4 and all(_octet(o) for o in octets):
            return f"{octets[0]}.{octets[1]}.{octets[2]}.0"
    host = client
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        host = client.rsplit(":", 1)[0]
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return host
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def _octet(text: str) -> bool:
    """A decimal octet as ``ipaddress`` reads one: 0-255, no sign, no leading zero."""
    return (
        0 < len(text) <= 3
        and text.isascii()
        and text.isdigit()
        and (text == "0" or text[0] != "0")
        and int(text) <= 255
    )


class UvicornAccessFilter(logging.Filter):
    """On the ``uvicorn.access`` logger, whichever handler prints it: the answer token and any
    credential-like query parameter out of the path, the client address truncated. Keeps the
    argument tuple that uvicorn's own access formatter unpacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client, method, path, version, status = args
            record.args = (
                _masked_client(str(client)),
                method,
                mask_answer_links(str(path)),
                version,
                status,
            )
        return True
