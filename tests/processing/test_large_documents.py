"""A large document costs a worker a few copies of itself, and the memory comes back.

A real ``docqueue queue worker`` (sandboxed, the default) processes one 50 MiB plain-text
document, the largest upload DOCQUEUE_MAX_UPLOAD_MB allows; its memory is read from
/proc (bench/large_documents.py). Measured before the fix: the worker's resident
high-water mark rose by 387-425 MiB over its idle size (counting the words built a
list of all 4 million of them, 235 MiB), and on SQLite it stayed 320 MiB above its
idle size afterwards, for ever (glibc and the database drivers kept what they
had grown to); its sandbox, waiting for the next document, still held this one.
"""

from __future__ import annotations

import pytest

from bench.large_documents import MIB, large_document, measure
from docqueue_app.models import Document, db
from docqueue_app.processing.extraction import MAX_TEXT_CHARS
from docqueue_app.queue.counts import count_words

DOCUMENT_MIB = 50
# What an idle sandbox holds (the interpreter and the extractors): 45 MiB measured.
IDLE_SANDBOX_MIB = 45


def test_a_worker_takes_a_few_copies_of_a_large_document_and_gives_the_memory_back(
    database_url, make_app
):
    memory = measure(database_url, "subprocess", "text", DOCUMENT_MIB)

    assert memory.status == "completed"
    # The bytes read, and sent to the sandbox; the text (20 million characters)
    # received, checked and written: +103 (SQLite) and +154 (PostgreSQL) after the fix.
    assert memory.worker_peak_mib - memory.worker_before_mib < 4 * DOCUMENT_MIB
    # Back near its idle size: +1 to +4 MiB after the fix (+318 and +72 before).
    assert memory.worker_after_mib - memory.worker_before_mib < DOCUMENT_MIB / 4
    # A sandbox waiting for its next document holds no copy of the last one (it held
    # the bytes and the text: 102 MiB before the fix, 45 after).
    assert memory.sandbox_after_mib < IDLE_SANDBOX_MIB + DOCUMENT_MIB / 2
    # And the text is stored whole, its words counted.
    _, content, _ = large_document("text", DOCUMENT_MIB * MIB)
    expected = content[:MAX_TEXT_CHARS].decode()
    with make_app().app_context():
        document = db.session.get(Document, memory.document_id)
        assert document.text == expected
        assert (document.char_count, document.word_count) == (len(expected), len(expected.split()))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "one",
        "  leading and trailing  ",
        "a b c d e f g h i j k l m n o p",
        "word\u00a0joined\u2003by\u3000unicode\nspaces\x1c\x1d\x1e\x1f\x85and\tcontrols",
        "longwordcrossingeveryslice " * 7,
        " " * 40,
        "x" * 40,
    ],
)
@pytest.mark.parametrize("slice_chars", [1, 2, 3, 5, 8])
def test_words_counted_a_slice_at_a_time_are_the_words_of_the_whole_text(text, slice_chars):
    assert count_words(text, slice_chars) == len(text.split())
