"""Keyed pseudonyms: what the database keeps instead of a customer's id where it needs a key.

A customer's id is needed in two places after the customer row itself: the inbound ledger and
dead letters (so that an erasure finds the rows about them) and the erasure tombstone (so that a
late event about an erased customer is recognised). A plain digest of the id would not do: the
shop's ids are guessable, and hashing candidate ids until one matches reverses it. These are
HMAC-SHA256 values under a key derived from ``NPS_SECRET_KEY``, so without that key they cannot
be reversed or even compared with an id.

The key is derived with its own label, so the secret is never used raw for a second purpose (it
also signs answer links). A subject pseudonym is the HMAC of the SHA-256 of the id: the
tombstones written before pseudonyms were keyed are exactly that SHA-256, so they can be re-keyed
(:meth:`Pseudonymiser.rekey`) without ever knowing the id they stand for.

One pseudonymiser serves the whole process: the process's runtime installs it from its settings
(``wiring.runtime``), and the code that writes or looks up pseudonyms asks :func:`pseudonymiser`
for it. Changing ``NPS_SECRET_KEY`` orphans every pseudonym already stored: tombstones stop
blocking late events and erasure no longer finds ledger rows; keep the key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

__all__ = [
    "ERASED_PREFIX",
    "LEGACY_TOMBSTONE_PREFIX",
    "Pseudonymiser",
    "PseudonymiserMissing",
    "current",
    "install",
    "legacy_tombstone",
    "pseudonymiser",
]

_DERIVATION_LABEL: Final = b"nps-dispatch pseudonyms v1"

LEGACY_TOMBSTONE_PREFIX: Final = "sha256:"
"""Marks a tombstone written before tombstones were keyed: the bare SHA-256 of the id."""

ERASED_PREFIX: Final = "erased:"
"""What an erased customer's external id starts with once the shop's id is gone."""


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Pseudonymiser:
    """HMAC-SHA256 pseudonyms under a key derived from one secret."""

    __slots__ = ("_key",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a pseudonymiser needs a non-empty secret")
        self._key = hmac.new(secret.encode(), _DERIVATION_LABEL, hashlib.sha256).digest()

    def _mac(self, label: str, value: str) -> str:
        return hmac.new(self._key, f"{label}:{value}".encode(), hashlib.sha256).hexdigest()

    def subject(self, customer_id: str) -> str:
        """The pseudonym of a shop customer id: ledger and dead-letter subject keys, tombstones."""
        return self._mac("subject", _sha256(customer_id))

    def rekey(self, legacy: str) -> str:
        """The pseudonym of the id whose unkeyed tombstone is ``legacy`` (``sha256:<hex>``)."""
        return self._mac("subject", legacy.removeprefix(LEGACY_TOMBSTONE_PREFIX))


def legacy_tombstone(customer_id: str) -> str:
    """A tombstone as written before tombstones were keyed, as migration 0003 marked it."""
    return LEGACY_TOMBSTONE_PREFIX + _sha256(customer_id)


class PseudonymiserMissing(RuntimeError):
    """Pseudonyms were asked for before the process's runtime installed a pseudonymiser."""


_installed: list[Pseudonymiser] = []  # at most one


def install(value: Pseudonymiser | None) -> None:
    """Make ``value`` the process's pseudonymiser (``None``: none; every use then fails)."""
    _installed[:] = [] if value is None else [value]


def current() -> Pseudonymiser | None:
    """The installed pseudonymiser, or ``None`` (for code that puts it back afterwards)."""
    return _installed[0] if _installed else None


def pseudonymiser() -> Pseudonymiser:
    """The process's pseudonymiser. Fails closed: storing a clear id because no key was
    installed would defeat the point, so there is no unkeyed fallback."""
    if not _installed:
        raise PseudonymiserMissing(
            "no pseudonymiser installed: build the process runtime (wiring.runtime) first"
        )
    return _installed[0]
