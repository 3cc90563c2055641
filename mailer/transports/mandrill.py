"""Mailchimp Transactional (Mandrill) webhooks: checking X-Mandrill-Signature, a pure function.

The sending channel itself (messages.send_raw with the exact MIME bytes, send_at, messages.info)
is not built yet; this is the part a webhook receiver needs first: refuse anything unsigned.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping


def webhook_signature(key: str, url: str, params: Mapping[str, str]) -> str:
    """The signature Mandrill sends with a webhook POST to ``url``.

    The URL exactly as configured (query string and trailing slash included), then each POST
    variable's key and value with no delimiter, sorted by key; HMAC-SHA1 with the webhook's
    key; base64 of the binary digest (Mailchimp Transactional, "How to Authenticate Webhook
    Requests").
    """
    signed = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(key.encode("utf-8"), signed.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_webhook(key: str, url: str, params: Mapping[str, str], header: str | None) -> bool:
    """True only when ``header`` (X-Mandrill-Signature) is the request's signature.

    Compared in constant time, so the answer's timing tells nothing about the right one.
    """
    if not header:
        return False
    expected = webhook_signature(key, url, params)
    return hmac.compare_digest(expected.encode("ascii"), header.strip().encode("ascii", "replace"))
