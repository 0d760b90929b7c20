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
_ABBREVIATION_ENDINGS = frozenset(a[-2:] for a in ABBREVIATIONS)  # all have two characters or more

# A sentence end: a run of '.', '?', '!' before white space or the end, or a blank line. Written to
# start with one character class so that the regex engine skips to candidates in C.
_END = re.compile(r"[.?!\n](?:(?<=[.?!])[.?!]*(?=\s|$)|(?<=\n)[ \t]*\n)")
_LIST_NUMBER = re.compile(r"\s*\(?\d{1,2}")
_WORD_BEFORE = re.compile(r"[A-Za-z][A-Za-z.]{0,11}$")
# Leading space and list marker, the sentence, trailing space.
_TRIM = re.compile(r"\s*(?:(?:\(?\d{1,2}[.)]|[-*\u2022])(?=\s))?\s*")
_LINE_LIST_ITEM = re.compile(r"\n(?=[ \t]*\(?\d{1,2}[.)]\s)")
_WORD = re.compile(r"\w")


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the '.' at `dot`, after a letter, closes an abbreviation rather than a sentence."""
    if dot == 1 or not (text[dot - 2].isalpha() or text[dot - 2] == "."):
        return True  # a single letter: "R.", initials
    if text[dot - 2 : dot].lower() not in _ABBREVIATION_ENDINGS:
        return False  # most sentence ends, without the regex
    match = _WORD_BEFORE.search(text, max(0, dot - 12), dot)
    return match is not None and match.group().rstrip(".").lower() in ABBREVIATIONS


def sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each sentence of text[start:end], stripped of space and list markers. The
    spans depend only on that slice when the char before it is no letter or digit (a header's ':',
    a line break), so a section's spans can be computed on its text alone."""
    pieces: list[tuple[int, int]] = []
    cursor = start
    for match in _END.finditer(text, start, end):
        dot, stop = match.span()
        mark = text[dot]
        if mark == "\n":
            pieces.append((cursor, dot))
        else:
            if mark == "." and stop - dot == 1 and dot:
                before = text[dot - 1]
                if before.isalpha():
                    if _is_abbreviation(text, dot):
                        continue
                elif before.isdigit() and _LIST_NUMBER.fullmatch(text, cursor, dot):
                    continue
            pieces.append((cursor, stop))
        cursor = stop
    pieces.append((cursor, end))
    spans: list[tuple[int, int]] = []
    for piece_start, piece_end in pieces:
        parts: tuple | list = ((piece_start, piece_end),)
        if text.find("\n", piece_start, piece_end) >= 0:
            # A line-initial list marker inside the piece starts a new sentence ("...clear\n2. No effusion").
            breaks = [m.start() for m in _LINE_LIST_ITEM.finditer(text, piece_start + 1, piece_end)]
            if breaks:
                parts = list(zip([piece_start, *breaks], [*breaks, piece_end]))
        for part_start, part_end in parts:
            if part_start + 1 < part_end and text[part_start] == " " and text[part_start + 1].isalpha():
                part_start += 1  # the common case, " Word...", without the regex
            elif not (part_start < part_end and text[part_start].isalpha()):
                part_start = _TRIM.match(text, part_start, part_end).end()
            while part_end > part_start and text[part_end - 1].isspace():
                part_end -= 1
            if part_start < part_end and (text[part_start].isalnum() or _WORD.search(text, part_start, part_end)):
                spans.append((part_start, part_end))
    return spans


def split_sentences(text: str, sections: list[Section]) -> list[Sentence]:
    """Sentences of FINDINGS then IMPRESSION (else LAST_PARAGRAPH), `sent_idx` 0.. across them."""
    sentences: list[Sentence] = []
    for section in sentence_sections(sections):
        for start, end in sentence_spans(text, section.start, section.end):
            sentences.append(Sentence(section.name, len(sentences), text[start:end], start, end))
    return sentences
