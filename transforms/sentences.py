"""Sentence splitting of the FINDINGS and IMPRESSION sections, with offsets into the report text.

Sentence ends are '.', '?' or '!' followed by white space, and blank lines; a list marker
("1.", "2)") at the start of a line or after a sentence end starts a new sentence and is not part
of it. A period is not an end after a known abbreviation ("approx.", "R.", "e.g."), a single
letter, or inside a number ("1.5 cm"). Single line breaks are line wraps, not ends. The
de-identification blank `___` is ordinary text.
"""
from __future__ import annotations

import re

from transforms.records import Sentence
from transforms.sections import Section, sentence_sections

# Lower-case words that a period follows without ending the sentence.
ABBREVIATIONS = frozenset(
    """
    approx appr apprx dr drs mr mrs vs e.g i.e eg ie cf fig figs incl esp
    prox dist rt lt bilat sq p.a a.p
    """.split()
)

_END = re.compile(r"[.?!]+(?=\s|$)|\n[ \t]*\n")
_LIST_NUMBER = re.compile(r"\s*\(?\d{1,2}")
_WORD_BEFORE = re.compile(r"[A-Za-z][A-Za-z.]{0,11}$")
# Leading space and list marker, the sentence, trailing space.
_TRIM = re.compile(r"\s*(?:(?:\(?\d{1,2}[.)]|[-*\u2022])(?=\s))?\s*")
_LINE_LIST_ITEM = re.compile(r"\n(?=[ \t]*\(?\d{1,2}[.)]\s)")
_WORD = re.compile(r"\w")


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the '.' at `dot` closes an abbreviation rather than a sentence."""
    if dot == 0 or not text[dot - 1].isalpha():
        return False
    if dot == 1 or not (text[dot - 2].isalpha() or text[dot - 2] == "."):
        return True  # a single letter: "R.", initials
    match = _WORD_BEFORE.search(text, max(0, dot - 12), dot)
    return match is not None and match.group().rstrip(".").lower() in ABBREVIATIONS


def _split_span(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each sentence of text[start:end], stripped of space and list markers."""
    spans: list[tuple[int, int]] = []
    cursor = start
    for match in _END.finditer(text, start, end):
        end_start = match.start()
        if text[end_start] == ".":
            if match.end() - end_start == 1 and (
                _is_abbreviation(text, end_start) or _LIST_NUMBER.fullmatch(text, cursor, end_start)
            ):
                continue
            _add_sentence(text, cursor, match.end(), spans)
        elif text[end_start] == "\n":
            _add_sentence(text, cursor, end_start, spans)
        else:
            _add_sentence(text, cursor, match.end(), spans)
        cursor = match.end()
    _add_sentence(text, cursor, end, spans)
    return spans


def _add_sentence(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    if "\n" in text[start:end]:
        # A line-initial list marker inside the span starts a new sentence ("...clear\n2. No effusion").
        breaks = [m.start() for m in _LINE_LIST_ITEM.finditer(text, start + 1, end)]
        if breaks:
            for piece_start, piece_end in zip([start, *breaks], [*breaks, end]):
                _add_piece(text, piece_start, piece_end, spans)
            return
    _add_piece(text, start, end, spans)


def _add_piece(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    start = _TRIM.match(text, start, end).end()
    while end > start and text[end - 1].isspace():
        end -= 1
    if _WORD.search(text, start, end):
        spans.append((start, end))


def split_sentences(text: str, sections: list[Section]) -> list[Sentence]:
    """Sentences of FINDINGS then IMPRESSION (else LAST_PARAGRAPH), `sent_idx` 0.. across them."""
    sentences: list[Sentence] = []
    for section in sentence_sections(sections):
        for start, end in _split_span(text, section.start, section.end):
            sentences.append(Sentence(section.name, len(sentences), text[start:end], start, end))
    return sentences
