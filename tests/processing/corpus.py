"""The shared real-document corpus (/work/shared/corpus) and its matching rule.

The corpus lives next to the project, never inside it: ``../shared/corpus``
seen from the project root. Tests that need it are skipped when it is absent.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# DOCQUEUE_TEST_CORPUS_DIR points elsewhere, for a checkout that is not next to shared/.
CORPUS_DIR = Path(
    os.environ.get("DOCQUEUE_TEST_CORPUS_DIR") or PROJECT_ROOT.parent / "shared" / "corpus"
)

CONTENT_TYPE_BY_KIND = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "html": "text/html",
    "text": "text/plain",
    "markdown": "text/markdown",
    "csv": "text/csv",
    "json": "application/json",
}

requires_corpus = pytest.mark.skipif(
    not CORPUS_DIR.is_dir(), reason=f"the shared corpus is absent ({CORPUS_DIR})"
)


def manifest() -> list[dict]:
    """The corpus entries, or none when the corpus is absent (the tests then skip)."""
    if not CORPUS_DIR.is_dir():
        return []
    return json.loads((CORPUS_DIR / "MANIFEST.json").read_text(encoding="utf-8"))


def read(relative_path: str) -> bytes:
    return (CORPUS_DIR / relative_path).read_bytes()


def normalized(text: str) -> str:
    """The corpus README's matching form: NFKC, every whitespace run one space."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text))


def missing_phrases(text: str, phrases: list[str]) -> list[str]:
    """The phrases not found in ``text`` (case-sensitive substring, after ``normalized``)."""
    haystack = normalized(text)
    return [phrase for phrase in phrases if normalized(phrase) not in haystack]
