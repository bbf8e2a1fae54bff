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
and scale labels are the email's own words (``channels/templates``). The words and the rendering
are in :mod:`web.answer_pages`, which also words the SMS replies for ``web.webhooks``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session, sessionmaker

from channels.links import ExpiredToken, InvalidToken
from channels.messages import resolve_locale
from config import OperatorConfig
from dispatch import responses
from models import Customer, Survey, utcnow
from models.session import retry_transient
from web.answer_pages import followup_question, language_of, message_page, redirect_to, render_page
from web.deps import runtime_of
from web.ratelimit import read_limited_body
from wiring.services import answer_links

__all__ = ["ANSWER_MAX_BODY", "router"]

log = logging.getLogger(__name__)
router = APIRouter()

ANSWER_MAX_BODY = 16 * 1024
"""A score and a 2000-character comment, form-encoded, with room to spare."""


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
        return _Checked(exc.survey_id, message_page(lang, shop, "closed", 410), expired=True)
    except InvalidToken:
        log.info("answer page: refused an altered or unknown token")
        lang = language_of(request.headers.get("accept-language"))
        return _Checked(None, message_page(lang, shop, "invalid", 403))


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
        return message_page(lang, shop, "closed", 410)
    step = request.query_params.get("step")
    if step == "thanks":
        return message_page(view.lang, shop, "thanks", 200)
    if step == "comment" and view.score is not None:
        band = runtime.config.survey.bands.band_of(view.score)
        return render_page(
            "followup.html",
            view.lang,
            shop,
            score=view.score,
            question=followup_question(runtime.config, band, view.lang),
            max_comment=responses.MAX_COMMENT,
        )
    from_link = _score_of(request.query_params.get("score"))
    return render_page(
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
    """The respondent's post in one transaction, run again when it met a dead connection, a
    deadlock or a serialisation failure (a person's answer is not lost to a transient error).
    Safe to run twice: an answer already recorded comes back ``unchanged``."""

    def work() -> responses.WebAnswer:
        with factory() as session, session.begin():
            outcome = responses.WebAnswer("no_score")
            if score is not None:
                outcome = responses.record_web_score(session, survey_id, score, config, now)
                if outcome.status == "closed":
                    return outcome
            if comment is not None:
                outcome = responses.record_web_comment(session, survey_id, comment, now)
            return outcome

    return retry_transient(work)


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
            return message_page(lang, shop, "closed", 410)
        return render_page(
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
        return message_page(view.lang if view else "en", shop, "closed", 410)
    if outcome.status == "no_score":
        return redirect_to("?")
    return redirect_to("?step=thanks" if comment is not None else "?step=comment")


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
    return render_page("unsubscribe.html", lang, runtime.config.survey.shop_name)


def _unsubscribe(
    factory: sessionmaker[Session], config: OperatorConfig, survey_id: int, now: datetime
) -> str:
    """Run again on a transient failure, as :func:`_save` (unsubscribing is idempotent)."""

    def work() -> str:
        with factory() as session, session.begin():
            return responses.unsubscribe_email(session, survey_id, config, now)

    return retry_transient(work)


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
    return message_page(lang, runtime.config.survey.shop_name, "unsubscribed", 200)
