"""The answer page: ``GET|POST /s/{token}`` and ``GET|POST /s/{token}/unsubscribe``.

The signed token in the path is the capability (``channels.links``): it names one survey and
expires with its response window. There is no session and no cookie; every form posts to the same
token URL, so a cross-site form cannot post without knowing the token (CSRF-safe by design), and
``Referrer-Policy: no-referrer`` keeps the token from leaking to other sites.

- ``GET /s/{token}[?score=N]`` renders the 0-10 question, ``N`` preselected, and records
  **nothing**: mail scanners fetch every link in an email. A real browser posts the preselected
  score at once by script; without script the button does.
- ``POST /s/{token}`` with ``score`` records it (a changed mind updates it; ``answers`` keeps the
  history) and redirects (303) to ``?step=comment``: the follow-up question of the score's band.
  ``POST`` with ``comment`` records the follow-up and redirects to ``?step=thanks``.
- An altered token gets 403, an expired one 410, a closed survey 410, each with a clear page.
- ``GET /s/{token}/unsubscribe`` shows a confirmation (it must not unsubscribe: scanners again);
  ``POST`` (the button, or RFC 8058 one-click ``List-Unsubscribe-Post``) revokes email consent. An
  expired but genuine token still unsubscribes: an unsubscribe link must keep working.

Pages are localised from the customer's locale (en, de, fr, ro; English otherwise); the question
and scale labels are the email's own words (``channels/templates``). This module also words the
SMS replies (:func:`sms_reply_text`) for ``web.webhooks``.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, PrefixLoader, StrictUndefined, select_autoescape
from sqlalchemy.orm import Session, sessionmaker

from channels.links import ExpiredToken, InvalidToken
from channels.messages import LOCALES, resolve_locale
from config import BandName, Followup, OperatorConfig
from dispatch import responses
from dispatch.responses import SmsReply
from models import Customer, Survey, utcnow
from web.deps import runtime_of
from web.ratelimit import read_limited_body
from wiring.services import answer_links

__all__ = ["ANSWER_MAX_BODY", "followup_question", "router", "sms_reply_text"]

log = logging.getLogger(__name__)
router = APIRouter()

ANSWER_MAX_BODY = 16 * 1024
"""A score and a 2000-character comment, form-encoded, with room to spare."""

_WHITESPACE = re.compile(r"\s+")
_DEFAULT_FOLLOWUP = Followup()


# --------------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _environment() -> Environment:
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
    return _environment().get_template(name).make_module()


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
    if configured != _DEFAULT_FOLLOWUP.question_for(band):
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


def _words(lang: str, shop: str, score: int | None = None) -> dict[str, str]:
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


def _headers(nonce: str) -> dict[str, str]:
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


def _render(
    template: str,
    lang: str,
    shop: str,
    *,
    status: int = 200,
    score: int | None = None,
    **context: object,
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    s = _words(lang, shop, score)
    html = (
        _environment()
        .get_template(f"web/{template}")
        .render(lang=lang, nonce=nonce, shop=shop, s=s, title=s["title"], **context)
    )
    return HTMLResponse(html, status_code=status, headers=_headers(nonce))


def _message(lang: str, shop: str, key: str, status: int) -> HTMLResponse:
    s = _words(lang, shop)
    return _render(
        "message.html", lang, shop, status=status, heading=s[f"{key}_title"], text=s[f"{key}_text"]
    )


def _redirect(query: str) -> Response:
    # Relative to the token URL itself ("?step=..."), so a path prefix of a proxy is kept.
    response = RedirectResponse(query, status_code=303)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


# --------------------------------------------------------------------------------------------
# Reading the survey
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _View:
    survey_id: int
    lang: str
    answerable: bool
    score: int | None


def _load(factory: sessionmaker[Session], survey_id: int, now: datetime) -> _View | None:
    """Read only: a GET never writes (no commit, nothing added)."""
    with factory() as session:
        survey = session.get(Survey, survey_id)
        if survey is None:
            return None
        customer = session.get(Customer, survey.customer_id)
        return _View(
            survey_id=survey.id,
            lang=resolve_locale(customer.locale if customer is not None else None),
            answerable=responses.can_answer(survey, now),
            score=survey.score,
        )


@dataclass(frozen=True, slots=True)
class _Checked:
    survey_id: int | None
    refusal: HTMLResponse | None = None
    expired: bool = False


async def _check(request: Request, token: str, now: datetime) -> _Checked:
    runtime = runtime_of(request)
    shop = runtime.config.survey.shop_name
    try:
        return _Checked(answer_links(runtime).verify(token, now))
    except ExpiredToken as exc:
        view = await run_in_threadpool(_load, runtime.factory, exc.survey_id, now)
        lang = view.lang if view else language_of(request.headers.get("accept-language"))
        return _Checked(exc.survey_id, _message(lang, shop, "closed", 410), expired=True)
    except InvalidToken:
        log.info("answer page: refused an altered or unknown token")
        lang = language_of(request.headers.get("accept-language"))
        return _Checked(None, _message(lang, shop, "invalid", 403))


def _score_of(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit() or len(value.strip()) > 2:
        return None
    score = int(value.strip())
    return score if 0 <= score <= 10 else None


async def _form(request: Request) -> dict[str, str]:
    body = await read_limited_body(request, ANSWER_MAX_BODY)
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20))
    except (UnicodeDecodeError, ValueError):
        return {}


# --------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------


@router.api_route("/s/{token}", methods=["GET", "HEAD"])
async def answer_page(request: Request, token: str) -> Response:
    runtime = runtime_of(request)
    shop = runtime.config.survey.shop_name
    now = utcnow()
    checked = await _check(request, token, now)
    if checked.refusal is not None:
        return checked.refusal
    if checked.survey_id is None:  # _check gives a survey or a refusal, never neither
        raise RuntimeError("answer link checked without a survey or a refusal")
    view = await run_in_threadpool(_load, runtime.factory, checked.survey_id, now)
    if view is None or not view.answerable:
        lang = view.lang if view else language_of(request.headers.get("accept-language"))
        return _message(lang, shop, "closed", 410)
    step = request.query_params.get("step")
    if step == "thanks":
        return _message(view.lang, shop, "thanks", 200)
    if step == "comment" and view.score is not None:
        band = runtime.config.survey.bands.band_of(view.score)
        return _render(
            "followup.html",
            view.lang,
            shop,
            score=view.score,
            question=followup_question(runtime.config, band, view.lang),
            max_comment=responses.MAX_COMMENT,
        )
    from_link = _score_of(request.query_params.get("score"))
    return _render(
        "scale.html",
        view.lang,
        shop,
        selected=from_link if from_link is not None else view.score,
        autopost=from_link is not None,
        error=False,
    )


def _save(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    survey_id: int,
    score: int | None,
    comment: str | None,
    now: datetime,
) -> responses.WebAnswer:
    with factory() as session, session.begin():
        outcome = responses.WebAnswer("no_score")
        if score is not None:
            outcome = responses.record_web_score(session, survey_id, score, config, now)
            if outcome.status == "closed":
                return outcome
        if comment is not None:
            outcome = responses.record_web_comment(session, survey_id, comment, now)
        return outcome


@router.post("/s/{token}")
async def answer_post(request: Request, token: str) -> Response:
    runtime = runtime_of(request)
    shop = runtime.config.survey.shop_name
    now = utcnow()
    checked = await _check(request, token, now)
    if checked.refusal is not None:
        return checked.refusal
    if checked.survey_id is None:  # _check gives a survey or a refusal, never neither
        raise RuntimeError("answer link checked without a survey or a refusal")
    form = await _form(request)
    score = _score_of(form.get("score"))
    comment = form.get("comment")
    if score is None and comment is None:
        view = await run_in_threadpool(_load, runtime.factory, checked.survey_id, now)
        if view is None or not view.answerable:
            lang = view.lang if view else "en"
            return _message(lang, shop, "closed", 410)
        return _render(
            "scale.html",
            view.lang,
            shop,
            status=422,
            selected=view.score,
            autopost=False,
            error=True,
        )
    outcome = await run_in_threadpool(
        _save, runtime.factory, runtime.config, checked.survey_id, score, comment, now
    )
    if outcome.status == "closed":
        view = await run_in_threadpool(_load, runtime.factory, checked.survey_id, now)
        return _message(view.lang if view else "en", shop, "closed", 410)
    if outcome.status == "no_score":
        return _redirect("?")
    return _redirect("?step=thanks" if comment is not None else "?step=comment")


async def _unsubscribe_target(request: Request, token: str) -> _Checked:
    """Unsubscribe links outlive the answer window: an expired but genuine token is accepted."""
    checked = await _check(request, token, utcnow())
    if checked.expired:
        return _Checked(checked.survey_id)
    return checked


@router.api_route("/s/{token}/unsubscribe", methods=["GET", "HEAD"])
async def unsubscribe_page(request: Request, token: str) -> Response:
    runtime = runtime_of(request)
    checked = await _unsubscribe_target(request, token)
    if checked.refusal is not None:
        return checked.refusal
    if checked.survey_id is None:  # _check gives a survey or a refusal, never neither
        raise RuntimeError("answer link checked without a survey or a refusal")
    view = await run_in_threadpool(_load, runtime.factory, checked.survey_id, utcnow())
    lang = view.lang if view else language_of(request.headers.get("accept-language"))
    return _render("unsubscribe.html", lang, runtime.config.survey.shop_name)


def _unsubscribe(
    factory: sessionmaker[Session], config: OperatorConfig, survey_id: int, now: datetime
) -> str:
    with factory() as session, session.begin():
        return responses.unsubscribe_email(session, survey_id, config, now)


@router.post("/s/{token}/unsubscribe")
async def unsubscribe_post(request: Request, token: str) -> Response:
    runtime = runtime_of(request)
    checked = await _unsubscribe_target(request, token)
    if checked.refusal is not None:
        return checked.refusal
    if checked.survey_id is None:  # _check gives a survey or a refusal, never neither
        raise RuntimeError("answer link checked without a survey or a refusal")
    await read_limited_body(request, ANSWER_MAX_BODY)  # "List-Unsubscribe=One-Click", or a form
    now = utcnow()
    await run_in_threadpool(_unsubscribe, runtime.factory, runtime.config, checked.survey_id, now)
    view = await run_in_threadpool(_load, runtime.factory, checked.survey_id, now)
    lang = view.lang if view else language_of(request.headers.get("accept-language"))
    return _message(lang, runtime.config.survey.shop_name, "unsubscribed", 200)
