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
