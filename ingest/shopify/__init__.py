"""Shopify: signed webhooks in (``POST /webhooks/shopify``), our shop events out.

:data:`ADAPTER` is what ``ingest.platforms`` needs; :mod:`.verify` checks the signature,
:mod:`.mapping` turns topics into events, :mod:`.privacy` covers the mandatory privacy topics.
"""

from __future__ import annotations

from ingest.platforms import Adapter
from ingest.shopify.mapping import PLATFORM, handles, map_webhook, subject_of
from ingest.shopify.verify import HMAC_HEADER, sign, verify

__all__ = ["ADAPTER", "HMAC_HEADER", "PLATFORM", "handles", "sign", "verify"]

ADAPTER = Adapter(platform=PLATFORM, map=map_webhook, subject=subject_of)
