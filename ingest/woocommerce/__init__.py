"""WooCommerce: signed order webhooks in (``POST /webhooks/woocommerce``), our shop events out.

:data:`ADAPTER` is what ``ingest.platforms`` needs; :mod:`.verify` checks the signature and
recognises the setup ping, :mod:`.mapping` turns an order's status into events.
"""

from __future__ import annotations

from ingest.platforms import Adapter
from ingest.woocommerce.mapping import PLATFORM, handles, map_webhook, subject_of
from ingest.woocommerce.verify import SIGNATURE_HEADER, is_ping, sign, verify

__all__ = ["ADAPTER", "PLATFORM", "SIGNATURE_HEADER", "handles", "is_ping", "sign", "verify"]

ADAPTER = Adapter(platform=PLATFORM, map=map_webhook, subject=subject_of)
