"""Rendering invitations: SMS within one GSM-7 segment, emails with eleven signed score links."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import channels
from channels.links import AnswerLinks
from channels.messages import LOCALES, RenderedEmail, render_email, render_sms, resolve_locale
from channels.twilio_sms.send import GSM7_BASIC, GSM7_EXTENSION, sms_segments

SHOP_20 = "Northwind Home Goods"  # 20 characters
assert len(SHOP_20) == 20
EXPIRES = datetime(2026, 12, 4, tzinfo=UTC)
STOP_LINES = {
    "en": "Reply STOP to opt out",
    "de": "Antworten Sie STOP zum Abmelden",
    "fr": "Répondez STOP pour vous désabonner",
    "ro": "Raspundeti STOP pentru dezabonare",
}


def score_links() -> tuple[list[str], str]:
    links = AnswerLinks("secret", "https://nps.example")
    return (
        [links.url_for(42, EXPIRES, score=n) for n in range(11)],
        links.unsubscribe_url(42, EXPIRES),
    )


def email(locale="en", shop=SHOP_20, first_name="Ana", is_reminder=False) -> RenderedEmail:
    links, unsubscribe = score_links()
    return render_email(locale, shop, first_name, links, unsubscribe, is_reminder)


# -- SMS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("first_name", [None, "Ana", "Alexandra"])
@pytest.mark.parametrize("is_reminder", [False, True])
def test_sms_fits_one_gsm7_segment_with_a_20_char_shop_name(locale, first_name, is_reminder):
    text = render_sms(locale, SHOP_20, first_name, is_reminder)

    assert len(text) <= 160, text
    assert sms_segments(text) == 1, text
    assert SHOP_20 in text
    assert "10" in text and "0" in text
    assert STOP_LINES[locale] in text
    assert "\n" not in text
    if first_name:
        assert first_name in text


def test_sms_texts_differ_by_locale_and_reminder():
    texts = {render_sms(locale, SHOP_20, "Ana", r) for locale in LOCALES for r in (False, True)}
    assert len(texts) == 2 * len(LOCALES)


def test_sms_name_cannot_break_lines():
    text = render_sms("en", "Shop\nName", "Ana\r\nBob", False)
    assert "\n" not in text and "\r" not in text
    assert "Shop Name" in text


def is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize(
    ("first_name", "shown"),
    [
        ("Ștefan", "Stefan"),  # ș is not GSM-7: as given it made a 3-segment UCS-2 SMS
        ("Zoë", "Zoe"),
        ("Łukasz", "Lukasz"),
        ("S\u0326tefan", "Stefan"),  # decomposed: S + combining comma below
        ("Jürgen", "Jürgen"),  # ü, é, ñ are GSM-7 letters: kept as they are
        ("e\u0301lodie", "élodie"),
        ("Ana 🙂", "Ana"),
        ("王小明", "WangXiaoMing"),
        ("Ana\u200b", "Ana"),  # zero-width space
    ],
)
def test_sms_name_is_transliterated_into_gsm7(locale, first_name, shown):
    text = render_sms(locale, SHOP_20, first_name, False)

    assert sms_segments(text) == 1, text
    assert is_gsm7(text), text
    assert f" {shown}," in text, text
    assert text == render_sms(locale, SHOP_20, shown, False)


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("is_reminder", [False, True])
@pytest.mark.parametrize("first_name", ["Alexandra" * 6, "Ștefan-" * 12, "🙂🙂", "\u200b"])
def test_sms_leaves_out_a_name_too_long_or_empty_in_gsm7(locale, is_reminder, first_name):
    text = render_sms(locale, SHOP_20, first_name, is_reminder)
    assert text == render_sms(locale, SHOP_20, None, is_reminder)
    assert sms_segments(text) == 1


SHOPS = st.sampled_from([SHOP_20, "Shop", "Café Ñoño & Söhne", "{EU} [Store] €"])


@settings(max_examples=400, deadline=None)
@given(
    first_name=st.one_of(st.none(), st.text(max_size=80)),
    locale=st.sampled_from([*LOCALES, "ro-RO", "pt-BR"]),
    is_reminder=st.booleans(),
    shop=SHOPS,
)
def test_sms_is_one_segment_whatever_the_name(first_name, locale, is_reminder, shop):
    nameless = render_sms(locale, shop, None, is_reminder)
    assert is_gsm7(nameless) and sms_segments(nameless) == 1  # the templates themselves

    text = render_sms(locale, shop, first_name, is_reminder)

    assert sms_segments(text) == 1, text
    assert is_gsm7(text), text
    assert "\n" not in text and "\r" not in text
    assert shop in text and "STOP" in text


# -- locale resolution ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("ro-RO", "ro"),
        ("de_AT", "de"),
        ("fr", "fr"),
        ("FR-ca", "fr"),
        ("en-GB", "en"),
        ("pt-BR", "en"),
        ("", "en"),
        (None, "en"),
        ("klingon", "en"),
    ],
)
def test_resolve_locale(tag, expected):
    assert resolve_locale(tag) == expected


def test_unknown_locale_falls_back_to_english():
    assert render_sms("pt-BR", SHOP_20, None, False) == render_sms("en", SHOP_20, None, False)
    assert email("xx") == email("en")


def test_regional_tags_use_their_language():
    assert render_sms("ro-RO", SHOP_20, "Ana", False) == render_sms("ro", SHOP_20, "Ana", False)
    assert email("de_AT").subject == email("de").subject


# -- email ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("is_reminder", [False, True])
def test_email_has_eleven_score_links_in_order(locale, is_reminder):
    links, unsubscribe = score_links()
    rendered = email(locale, is_reminder=is_reminder)

    hrefs = [html.unescape(h) for h in re.findall(r'href="([^"]+)"', rendered.html)]
    assert [h for h in hrefs if "score=" in h] == links
    assert hrefs == [*links, unsubscribe]
    text_urls = re.findall(r"https://\S+", rendered.text)
    assert [u for u in text_urls if "score=" in u] == links
    assert text_urls == [*links, unsubscribe]
    for n, url in enumerate(links):
        assert f"{n:>2}: {url}" in rendered.text
    assert SHOP_20 in rendered.subject and SHOP_20 in rendered.text
    assert f'lang="{locale}"' in rendered.html
    assert "\n" not in rendered.subject


@pytest.mark.parametrize("locale", LOCALES)
def test_email_buttons_are_labelled_zero_to_ten(locale):
    rendered = email(locale)
    labels = re.findall(r'<a href="[^"]+score=\d+"[^>]*>(\d+)</a>', rendered.html)
    assert labels == [str(n) for n in range(11)]
    assert '<meta name="viewport"' in rendered.html
    assert "<style" not in rendered.html  # inline styles only


def test_email_reminder_differs():
    first, reminder = email(is_reminder=False), email(is_reminder=True)
    assert first.subject != reminder.subject
    assert reminder.subject.startswith("Reminder")
    assert "A few days ago" in reminder.text and "A few days ago" not in first.text


def test_email_greets_by_name_or_not():
    assert email(first_name="Ana").text.startswith("Hi Ana,")
    assert email(first_name=None).text.startswith("Hello,")
    assert email("de", first_name=None).text.startswith("Guten Tag,")


def test_html_escapes_a_malicious_shop_and_name():
    evil = '<script>alert("x")</script> & "Co"'
    rendered = email(shop=evil, first_name="<img src=x onerror=alert(1)>")

    assert "<script>" not in rendered.html
    assert "<img" not in rendered.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;Co&#34;" in rendered.html
    assert "&lt;img src=x onerror=alert(1)&gt;" in rendered.html
    # Plain text and subject carry the name as it is (no HTML there).
    assert evil in rendered.text
    assert evil in rendered.subject


def test_needs_eleven_links():
    links, unsubscribe = score_links()
    with pytest.raises(ValueError, match="11 score links"):
        render_email("en", SHOP_20, None, links[:10], unsubscribe, False)


def test_templates_ship_inside_the_package():
    root = Path(channels.__file__).parent / "templates"
    for locale in LOCALES:
        assert (root / locale / "strings.txt").is_file()
    assert (root / "email.html").is_file()
    assert (root / "email.txt").is_file()


def test_every_locale_defines_every_string():
    # The English and localised texts differ: a missing translation would show up as English.
    base = email("en", is_reminder=True)
    for locale in ("de", "fr", "ro"):
        rendered = email(locale, is_reminder=True)
        assert rendered.subject != base.subject
        assert rendered.text.splitlines()[0] != base.text.splitlines()[0]


def test_rendering_is_pure():
    assert email() == email()
    assert render_sms("fr", SHOP_20, "Ana", True) == render_sms("fr", SHOP_20, "Ana", True)
