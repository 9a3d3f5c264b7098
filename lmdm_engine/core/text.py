"""Wording shared by error messages."""

from __future__ import annotations

import difflib


def close_match(word: str, options) -> str:
    """`` (did you mean 'x'?)`` for the option closest to a mistyped ``word``, or "" when none is close."""
    match = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""
