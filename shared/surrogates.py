"""Lone UTF-16 surrogates in JSON text: valid JSON, but no UTF-8 encoder takes them.

A JSON string may hold a surrogate escape alone (``"\\ud83d"``: a library cut a string inside an
emoji, and ``JSON.stringify`` and ``json.dumps`` both write it). ``json.loads`` keeps it as a lone
surrogate, which DynamoDB, SQS and Segment all refuse; the bridge reads it as U+FFFD, as a browser's
``TextEncoder`` does, so that one cut string does not cost the message or its neighbours.
"""

from __future__ import annotations

import re
from typing import Any

# A JSON escape of a UTF-16 surrogate (``\ud83d``), alone or in a pair.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogate_escape(raw: bytes) -> bool:
    """Whether the JSON text escapes a surrogate (then its document may hold a lone one)."""
    return _SURROGATE_ESCAPE.search(raw) is not None


def replace_lone_surrogates(document: Any) -> Any:
    """Every lone surrogate in the document's strings (keys included) becomes U+FFFD; the pairs JSON
    escapes were already joined into one character. In place, without recursion: ``json.loads``
    reads deeper documents than Python would recurse into."""
    if isinstance(document, str):
        return _LONE_SURROGATE.sub("\ufffd", document)
    pending = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            for index, value in enumerate(node):
                if isinstance(value, str):
                    node[index] = _LONE_SURROGATE.sub("\ufffd", value)
                elif isinstance(value, list | dict):
                    pending.append(value)
        elif isinstance(node, dict):
            entries = list(node.items())
            node.clear()
            for key, value in entries:
                if isinstance(value, str):
                    value = _LONE_SURROGATE.sub("\ufffd", value)
                elif isinstance(value, list | dict):
                    pending.append(value)
                node[_LONE_SURROGATE.sub("\ufffd", key)] = value
    return document
