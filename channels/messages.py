"""Rendering the invitation: one SMS, or one email (subject, plain text, HTML), per locale.

The words of each locale live in ``channels/templates/<locale>/strings.txt`` (Jinja2 macros, plain
text); the layouts ``email.txt`` and ``email.html`` are shared by every locale. HTML is
autoescaped, so a shop or first name can never inject markup. Shipped locales: en, de, fr, ro;
``"ro-RO"`` -> ro, ``"de_AT"`` -> de, anything else -> en.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

__all__ = [
    "DEFAULT_LOCALE",
    "LOCALES",
    "RenderedEmail",
    "render_email",
    "render_sms",
    "resolve_locale",
]

DEFAULT_LOCALE = "en"
LOCALES: tuple[str, ...] = ("en", "de", "fr", "ro")
SCORES = 11  # 0..10

_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("channels", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )


def resolve_locale(locale: str | None) -> str:
    """The shipped locale for a customer's locale tag: its language part, else English."""
    if not locale:
        return DEFAULT_LOCALE
    language = re.split(r"[-_.@]", locale.strip(), maxsplit=1)[0].lower()
    return language if language in LOCALES else DEFAULT_LOCALE


def _one_line(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def _clean_name(value: str | None) -> str | None:
    # A name is data, not layout: no line breaks (they would split an SMS or a header).
    if value is None:
        return None
    value = _one_line(value)
    return value or None


def _strings(locale: str | None) -> tuple[str, Any]:
    """The resolved locale and its ``strings.txt`` module (macros called from Python return
    plain ``str``; the HTML layout escapes them like any other value)."""
    lang = resolve_locale(locale)
    return lang, _module(lang)


@lru_cache(maxsize=len(LOCALES))
def _module(lang: str) -> Any:
    return _environment().get_template(f"{lang}/strings.txt").make_module()


def render_sms(
    locale: str | None, shop_name: str, first_name: str | None, is_reminder: bool
) -> str:
    """The invitation SMS: the question with the shop's name, "reply 0-10", the STOP line."""
    _, strings = _strings(locale)
    return _one_line(
        str(strings.sms(_one_line(shop_name), _clean_name(first_name), bool(is_reminder)))
    )


def render_email(
    locale: str | None,
    shop_name: str,
    first_name: str | None,
    links: Sequence[str],
    unsubscribe_url: str,
    is_reminder: bool,
) -> RenderedEmail:
    """The invitation email. ``links[n]`` is the signed answer link for score ``n`` (0..10)."""
    if len(links) != SCORES:
        raise ValueError(f"render_email needs {SCORES} score links (0..10), got {len(links)}")
    lang, strings = _strings(locale)
    shop = _one_line(shop_name)
    name = _clean_name(first_name)
    words = {
        "greeting": strings.greeting(name),
        "reminder": strings.reminder(shop),
        "question": strings.question(shop),
        "low_label": strings.low_label(),
        "high_label": strings.high_label(),
        "note": strings.note(),
        "footer": strings.footer(shop),
        "unsubscribe": strings.unsubscribe(),
    }
    context: dict[str, object] = {
        "lang": lang,
        "s": {key: _one_line(str(value)) for key, value in words.items()},
        "subject": _one_line(str(strings.subject(shop, bool(is_reminder)))),
        "links": list(links),
        "unsubscribe_url": unsubscribe_url,
        "is_reminder": bool(is_reminder),
    }
    env = _environment()
    text = env.get_template("email.txt").render(context).strip() + "\n"
    html = env.get_template("email.html").render(context)
    return RenderedEmail(subject=str(context["subject"]), text=text, html=html)
