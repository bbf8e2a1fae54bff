"""Reading an operator config file, and saying precisely what is wrong with a bad one.

- :func:`load_config` reads one file; ``None`` or an absent file gives the built-in defaults
  (no rules and no arms). Every problem of a bad file is reported at once, each as
  ``key.path: reason``, in a :class:`ConfigError`.
- :func:`check_config_file` backs ``nps-dispatch config check [FILE]``.
- :func:`config_path_from_env` names the file a process reads (``$NPS_CONFIG``).
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from config.operator import OperatorConfig, default_config

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ConfigError",
    "check_config_file",
    "config_path_from_env",
    "load_config",
    "parse_config",
    "read_config_bytes",
]

log = logging.getLogger(__name__)


DEFAULT_CONFIG_PATH = "./nps-dispatch.toml"


class ConfigError(ValueError):
    """A config file that cannot be used; ``problems`` holds one ``key.path: reason`` each."""

    def __init__(self, path: Path | None, problems: Iterable[str]) -> None:
        self.path = path
        self.problems: tuple[str, ...] = tuple(problems)
        where = f"config {path}" if path is not None else "config"
        super().__init__(f"{where} is invalid:\n" + "\n".join(f"  {p}" for p in self.problems))


def _format_loc(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _join_paths(base: str, relative: str) -> str:
    if not relative:
        return base
    if not base:
        return relative
    return f"{base}{relative}" if relative.startswith("[") else f"{base}.{relative}"


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class whose key sits at ``loc`` (for listing the allowed keys)."""
    annotation: Any = OperatorConfig
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(part, int):
            args = [a for a in get_args(annotation) if a is not Ellipsis]
            if not args:
                return None
            annotation = args[0]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
        else:
            return None
    annotation = _unwrap(annotation)
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is not None and type(None) in get_args(annotation):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            return annotation


def _format_errors(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        path = _format_loc(loc)
        kind = error["type"]
        ctx = error.get("ctx") or {}
        if kind == "cross_field" and "problems" in ctx:
            for relative, reason in ctx["problems"]:
                problems.append(f"{_join_paths(path, relative) or '(top)'}: {reason}")
            continue
        if kind == "extra_forbidden":
            model = _model_at(loc[:-1])
            allowed = f" (expected one of: {', '.join(model.model_fields)})" if model else ""
            message = f"unknown key{allowed}"
        elif kind == "missing":
            message = "required"
        else:
            message = str(error["msg"])
            for prefix in ("Value error, ", "Assertion failed, "):
                message = message.removeprefix(prefix)
        problems.append(f"{path or '(top)'}: {message}")
    return problems


_TOML_POSITION = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")


def parse_config(raw: bytes, path: Path | None) -> OperatorConfig:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"file: not UTF-8 text (byte {exc.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POSITION.match(str(exc))
        if match is not None:
            problem = f"line {match['line']}, column {match['col']}: TOML syntax: {match['msg']}"
        else:
            problem = f"file: TOML syntax: {exc}"
        raise ConfigError(path, [problem]) from None
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, _format_errors(exc)) from None


def config_path_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """``$NPS_CONFIG``, else ``./nps-dispatch.toml``."""
    env = os.environ if environ is None else environ
    return Path(env.get("NPS_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: Path | None) -> OperatorConfig:
    """Read and validate ``path``. ``None`` or an absent file: the built-in defaults.

    (``None`` does not consult ``NPS_CONFIG``; use ``load_config(config_path_from_env())``.)
    Raises :class:`ConfigError` listing every problem.
    """
    if path is None:
        return default_config()
    raw = read_config_bytes(path)
    if raw is None:
        log.info("no config file at %s: using the built-in defaults", path)
        return default_config()
    return parse_config(raw, path)


def read_config_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(path, ["file: is a directory"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"file: cannot read ({exc.strerror or exc})"]) from None


def check_config_file(path: Path) -> tuple[bool, str]:
    """For ``nps-dispatch config check [FILE]``: ``(ok, message to print)``."""
    try:
        raw = read_config_bytes(path)
        if raw is None:
            return (
                False,
                f"no config file at {path}\n"
                f"(a process would run on the built-in defaults, version "
                f"{default_config().version})",
            )
        config = parse_config(raw, path)
    except ConfigError as exc:
        return False, str(exc)
    return True, (
        f"config {path} is valid (version {config.version}, "
        f"schedule {config.schedule_version})\n{config.summary()}"
    )
