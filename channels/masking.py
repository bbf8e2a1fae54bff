"""Masking contacts for logs: enough to tell two recipients apart, never enough to reach one.

``mask_phone("+40721000111") == "+40******111"``, ``mask_email("ana@example.com") ==
"a**@example.com"``. :func:`mask_text` scrubs free text (a provider's error message may quote the
recipient) before it is logged or stored.
"""

from __future__ import annotations

import re

__all__ = ["mask_email", "mask_phone", "mask_text"]

_PHONE_IN_TEXT = re.compile(r"\+?\d[\d ().-]{5,}\d")
_EMAIL_IN_TEXT = re.compile(r"[^\s@<>\"'(),;:]+@[^\s@<>\"'(),;:]+\.[^\s@<>\"'(),;:]+")


def mask_phone(phone: str) -> str:
    """Keep the ``+``, the first two digits (the country, roughly) and the last three."""
    phone = phone.strip()
    plus = "+" if phone.startswith("+") else ""
    digits = re.sub(r"\D", "", phone)
    if len(digits) <= 5:
        return plus + "*" * len(digits)
    return f"{plus}{digits[:2]}{'*' * (len(digits) - 5)}{digits[-3:]}"


def mask_email(email: str) -> str:
    """Keep the first character of the local part and the domain."""
    email = email.strip()
    local, at, domain = email.rpartition("@")
    if not at or not local:
        return "***"
    return f"{local[0]}{'*' * (len(local) - 1)}@{domain}"


def mask_text(text: str) -> str:
    """Mask every phone number and email address found in free text."""
    text = _EMAIL_IN_TEXT.sub(lambda m: mask_email(m.group(0)), text)
    return _PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group(0)), text)


# --- whole log lines ----------------------------------------------------------------------------
# A log line holds dates, times, addresses and ids, so the phone shape here is stricter than the
# one above (which reads short provider messages): a ``+`` (or its URL encoding ``%2B``) and 7 to
# 15 digits, or a bare run of 9 to 15 digits; either may be spaced by ``().-``. It never starts
# inside a word, a number or a dashed id, and ISO dates and IPv4 addresses are left alone.
_PHONE_IN_LOG = re.compile(
    r"(?<![\w.%+-])(?<!\d:)"
    r"(?!\d{4}-\d{2}-\d{2}(?!\d))"
    r"(?!\d{1,3}(?:\.\d{1,3}){3}(?!\d))"
    r"(?:\+|%2[Bb])?\(?\d(?:[ ().-]{0,2}\d){6,16}"
    r"(?![\w:]|[.-]\w)"
)
# An address in a URL query string, with its ``@`` encoded.
_ENCODED_EMAIL_IN_TEXT = re.compile(r"[\w.+-]+%40[\w-]+(?:\.[\w-]+)+")
# channels/links.py: itsdangerous' URL-safe payload (``.``-prefixed when compressed), a dot, and
# the 43 characters of an HMAC-SHA256 signature.
_ANSWER_TOKEN = re.compile(r"(?<![\w.-])\.?[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{43}(?![\w-])")
_NANP = re.compile(r"\d{3}[ .-]\d{3}[ .-]\d{4}")
_DIGIT_RUN = re.compile(r"(?<!\d)\d{9,15}(?!\d)")
_ANSWER_PATH = re.compile(r"(/s/)[^/?#\s\"'<>\[]+")
_SECRET_QUERY_PARAM = re.compile(
    r"(?i)([?&;](?:token|access_token|signature|sig|secret|password|passwd|api_?key|key|auth)=)"
    r"[^&#\s\"'<>]+"
)

__all__ += ["mask_answer_links", "mask_log_text"]


def _mask_log_phone(match: re.Match[str]) -> str:
    found = match.group(0)
    encoded_plus = found[:3].upper() == "%2B"
    rest = found[3:] if encoded_plus else found
    digits = sum(c.isdigit() for c in rest)
    if encoded_plus or rest.startswith("+"):
        return ("%2B" if encoded_plus else "") + mask_phone(rest) if 7 <= digits <= 15 else found
    # Without a country code, spaced digits are a phone number only in a national shape
    # (a leading 0 or area code in brackets, or 555-123-4567); "120 340 560" is three counts.
    if 9 <= digits <= 15 and (rest.isdigit() or rest[0] in "0(" or _NANP.fullmatch(rest)):
        return mask_phone(rest)
    return _DIGIT_RUN.sub(lambda m: mask_phone(m.group(0)), found)


def mask_answer_links(text: str) -> str:
    """Hide answer tokens (``/s/<token>`` -> ``/s/[token]``, and any token-shaped string) and
    the values of query parameters named like a credential (``?token=``, ``&sig=``...)."""
    if "/s/" in text:
        text = _ANSWER_PATH.sub(r"\1[token]", text)
    if "." in text:
        text = _ANSWER_TOKEN.sub("[token]", text)
    if "=" in text:
        text = _SECRET_QUERY_PARAM.sub(r"\1[redacted]", text)
    return text


# Deletes the digits: what is left tells how many there were, at C speed.
_WITHOUT_DIGITS = str.maketrans("", "", "0123456789")


def mask_log_text(text: str) -> str:
    """Everything above, for a whole rendered log line: answer tokens, email addresses (also
    URL-encoded) and phone numbers. Masking twice changes nothing.

    It runs on every log line, so each pattern is tried only when the text holds the character
    it cannot do without."""
    text = mask_answer_links(text)
    if "@" in text:
        text = _EMAIL_IN_TEXT.sub(lambda m: mask_email(m.group(0)), text)
    if "%40" in text:
        text = _ENCODED_EMAIL_IN_TEXT.sub(
            lambda m: mask_email(m.group(0).replace("%40", "@")).replace("@", "%40"), text
        )
    if len(text) - len(text.translate(_WITHOUT_DIGITS)) >= 7:
        text = _PHONE_IN_LOG.sub(_mask_log_phone, text)
    return text
