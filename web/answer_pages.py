"""What the answer page and the SMS replies say, in the customer's language (en, de, fr, ro;
English otherwise), and how a page is rendered: Jinja2 templates under ``channels/templates``,
a fresh CSP nonce per page, no caching, no referrer."""

from __future__ import annotations

import re
import secrets
from functools import lru_cache
from typing import Any

from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, PrefixLoader, StrictUndefined, select_autoescape

from channels.messages import LOCALES, resolve_locale
from config import BandName, Followup, OperatorConfig
from dispatch.responses import SmsReply

__all__ = [
    "followup_question",
    "language_of",
    "message_page",
    "redirect_to",
    "render_page",
    "sms_reply_text",
    "words",
]

DEFAULT_FOLLOWUP = Followup()
_WHITESPACE = re.compile(r"\s+")

# --------------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def environment() -> Environment:
    return Environment(
        loader=PrefixLoader(
            {
                "web": PackageLoader("web", "templates"),
                "channels": PackageLoader("channels", "templates"),
            }
        ),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


@lru_cache(maxsize=2 * len(LOCALES))
def _module(name: str) -> Any:
    return environment().get_template(name).make_module()


def _one_line(value: object) -> str:
    return _WHITESPACE.sub(" ", str(value)).strip()


def _ours(lang: str) -> Any:
    return _module(f"web/{lang}/strings.txt")


def _email_words(lang: str) -> Any:
    return _module(f"channels/{lang}/strings.txt")


def followup_question(config: OperatorConfig, band: BandName, lang: str) -> str:
    """The operator's follow-up question for a band; when the operator kept the built-in
    (English) default, its translation in the customer's language."""
    configured = config.survey.followup.question_for(band)
    if configured != DEFAULT_FOLLOWUP.question_for(band):
        return configured
    return _one_line(getattr(_ours(lang), f"followup_{band}")())


def _sms_safe(lang: str, text: str) -> str:
    # Romanian SMS are written without diacritics (GSM-7, one segment): as channels/ does.
    if lang != "ro":
        return text
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def sms_reply_text(reply: SmsReply, config: OperatorConfig) -> str:
    """The words of an SMS reply, in the customer's language."""
    lang = resolve_locale(reply.locale)
    words = _ours(lang)
    shop = _one_line(config.survey.shop_name)
    if reply.kind == "followup" and reply.band is not None:
        text = words.sms_followup(followup_question(config, reply.band, lang))
    elif reply.kind == "reprompt":
        text = words.sms_reprompt()
    elif reply.kind == "help":
        text = words.sms_help(shop)
    else:
        text = words.sms_thanks(shop)
    return _sms_safe(lang, _one_line(text))


def words(lang: str, shop: str, score: int | None = None) -> dict[str, str]:
    ours, email = _ours(lang), _email_words(lang)
    words = {
        "title": ours.page_title(shop),
        "question": email.question(shop),
        "low": email.low_label(),
        "high": email.high_label(),
        "send": ours.send(),
        "saving": ours.saving(),
        "choose_error": ours.choose_error(),
        "score_chosen": ours.score_chosen(score if score is not None else ""),
        "optional": ours.optional(),
        "change_score": ours.change_score(),
        "thanks_title": ours.thanks_title(),
        "thanks_text": ours.thanks_text(shop),
        "invalid_title": ours.invalid_title(),
        "invalid_text": ours.invalid_text(),
        "closed_title": ours.closed_title(),
        "closed_text": ours.closed_text(),
        "unsubscribe_title": ours.unsubscribe_title(),
        "unsubscribe_text": ours.unsubscribe_text(shop),
        "unsubscribe_button": ours.unsubscribe_button(),
        "unsubscribed_title": ours.unsubscribed_title(),
        "unsubscribed_text": ours.unsubscribed_text(shop),
    }
    return {key: _one_line(value) for key, value in words.items()}


_LANGUAGE = re.compile(r"\s*([A-Za-z]{1,8})(?:[-_][A-Za-z0-9]{1,8})*\s*(?:;\s*q\s*=\s*([0-9.]+))?")


def language_of(accept_language: str | None) -> str:
    """The best shipped locale for an ``Accept-Language`` header (pages without a survey)."""
    best: tuple[float, str] | None = None
    for part in (accept_language or "").split(",")[:20]:
        match = _LANGUAGE.fullmatch(part)
        if match is None:
            continue
        lang = match[1].lower()
        try:
            quality = float(match[2]) if match[2] else 1.0
        except ValueError:
            continue
        if lang in LOCALES and quality > 0 and (best is None or quality > best[0]):
            best = (quality, lang)
    return best[1] if best else resolve_locale(None)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def page_headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "X-Robots-Tag": "noindex, nofollow",
    }


def render_page(
    template: str,
    lang: str,
    shop: str,
    *,
    status: int = 200,
    score: int | None = None,
    **context: object,
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    s = words(lang, shop, score)
    html = (
        environment()
        .get_template(f"web/{template}")
        .render(lang=lang, nonce=nonce, shop=shop, s=s, title=s["title"], **context)
    )
    return HTMLResponse(html, status_code=status, headers=page_headers(nonce))


def message_page(lang: str, shop: str, key: str, status: int) -> HTMLResponse:
    s = words(lang, shop)
    return render_page(
        "message.html", lang, shop, status=status, heading=s[f"{key}_title"], text=s[f"{key}_text"]
    )


def redirect_to(query: str) -> Response:
    # Relative to the token URL itself ("?step=..."), so a path prefix of a proxy is kept.
    response = RedirectResponse(query, status_code=303)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
