"""The id a document sent without one gets, the same whichever side makes it: the SDK and the
CLI make it before sending, the server for a document that arrives without one (HTTP, raw
gRPC). So the same document, sent again through any surface, replaces itself."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

# The namespace of the ids made from a document's content. Fixed for good: another one would
# give every document a new id, and rerunning a load made by an older client would store
# each document twice.
CONTENT_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "embedsense:document")


def content_id(text: str, metadata: Mapping[str, Any]) -> str:
    """The id made from a document's text and metadata (32 hex digits)."""
    key = json.dumps([text, metadata], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return uuid.uuid5(CONTENT_IDS, key).hex
