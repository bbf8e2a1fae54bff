"""Rendering the invitation: one SMS, or one email (subject, plain text, HTML), per locale.

The words of each locale live in ``channels/templates/<locale>/strings.txt`` (Jinja2 macros, plain
text); the layouts ``email.txt`` and ``email.html`` are shared by every locale. HTML is
autoescaped, so a shop or first name can never inject markup. Shipped locales: en, de, fr, ro;
``"ro-RO"`` -> ro, ``"de_AT"`` -> de, anything else -> en.

An SMS stays one segment whatever the customer's name: a name that would turn the GSM-7 text
into UCS-2 (70 characters a segment instead of 160) is transliterated ("Ștefan" -> "Stefan"),
and a name still too long for one segment is left out (see :func:`render_sms`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from anyascii import anyascii
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from channels.twilio_sms.send import GSM7_BASIC, GSM7_EXTENSION, sms_segments

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
# Characters a name may keep in a GSM-7 SMS: the alphabet without its line and page breaks.
_GSM7_NAME_CHARS = (GSM7_BASIC | GSM7_EXTENSION) - frozenset("\n\r\f")


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


def _is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def _gsm7_name(name: str) -> str | None:
    """The name in the GSM-7 alphabet: its GSM-7 letters kept as they are ("Jürgen" stays),
    other letters and digits transliterated ("Ș" -> "S", "王" -> "Wang"), anything else (emoji,
    symbols, control and formatting characters) dropped."""
    kept: list[str] = []
    for ch in unicodedata.normalize("NFC", name):
        if ch in _GSM7_NAME_CHARS:
            kept.append(ch)
        elif ch.isspace():
            kept.append(" ")
        elif unicodedata.category(ch)[0] in "LMN":
            kept.extend(c for c in anyascii(ch) if c in _GSM7_NAME_CHARS)
    return _clean_name("".join(kept))


def _name_forms(name: str) -> Iterator[str]:
    """The forms of a name to try, best first: as given, then in GSM-7."""
    yield name
    transliterated = _gsm7_name(name)
    if transliterated is not None and transliterated != name:
        yield transliterated


def render_sms(
    locale: str | None, shop_name: str, first_name: str | None, is_reminder: bool
) -> str:
    """The invitation SMS: the question with the shop's name, "reply 0-10", the STOP line.

    The first name is used as given when the text then stays in as many segments as without it
    (one, for every shipped template and a shop name of up to 20 characters) and in GSM-7 when
    the nameless text is GSM-7; else in its GSM-7 transliteration under the same conditions;
    else the SMS greets without a name. Each extra segment is billed, and a UCS-2 text is cut
    into 70-character segments.
    """
    _, strings = _strings(locale)
    shop = _one_line(shop_name)

    def render(name: str | None) -> str:
        return _one_line(str(strings.sms(shop, name, bool(is_reminder))))

    nameless = render(None)
    name = _clean_name(first_name)
    if name is None:
        return nameless
    max_segments = sms_segments(nameless)
    needs_gsm7 = _is_gsm7(nameless)
    for form in _name_forms(name):
        text = render(form)
        if sms_segments(text) <= max_segments and (_is_gsm7(text) or not needs_gsm7):
            return text
    return nameless


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
