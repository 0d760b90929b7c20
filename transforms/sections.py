"""Report sections, the way the MIMIC-CXR section parser (MIT-LCP/mimic-cxr, txt/section_parser.py) finds them.

A section starts at an upper-case header at the start of a line followed by a colon
(`FINDINGS:`, `IMPRESSION:`, `REASON FOR EXAMINATION:`); its text runs to the next header. Header
names are normalised (typos and synonyms such as `CONCLUSION` -> `IMPRESSION`). Differences from
the reference, all additive:
- an addendum on top, delimited from the original report by a line of underscores, is its own
  `ADDENDUM` section and the original report below it is parsed as usual;
- the centred `FINAL REPORT` title line is not a section (it carries no colon) and stays in the
  `PREAMBLE`;
- when neither FINDINGS nor IMPRESSION exists, the last section's text after its first paragraph
  becomes `LAST_PARAGRAPH` as in the reference; a last section of a single paragraph (e.g. a
  headerless one-paragraph report) becomes `LAST_PARAGRAPH` whole, so plain text is still read.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

FINDINGS = "FINDINGS"
IMPRESSION = "IMPRESSION"
LAST_PARAGRAPH = "LAST_PARAGRAPH"
PREAMBLE = "PREAMBLE"
ADDENDUM = "ADDENDUM"
FULL_REPORT = "FULL_REPORT"


class Section(NamedTuple):  # a named tuple: made for every header of every report, it must be cheap
    name: str  # normalised, upper case: 'FINDINGS', 'IMPRESSION', 'LAST_PARAGRAPH', ...
    start: int  # char offsets of the section's text (after its header) in the report
    end: int


# A header at the start of the text and after a line break (two patterns: one that starts with the
# line break lets the regex engine skip to candidates in C, which `(?m)^` does not).
_FIRST_HEADER = re.compile(r"[ \t]*([A-Z][A-Z ()/,&-]*[A-Z)])[ \t]*:")
_LINE_HEADER = re.compile(r"\n[ \t]*([A-Z][A-Z ()/,&-]*[A-Z)])[ \t]*:")
_NON_SPACE = re.compile(r"\S")
_UNDERSCORE_LINE = re.compile(r"(?m)^[ \t]*_{8,}[ \t]*$")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")

# Header spellings seen in MIMIC-CXR -> canonical name (the reference parser's table, upper-cased).
_NAME_MAP = {
    "IMPRESSION": IMPRESSION, "COMPARISON": "COMPARISON", "INDICATION": "INDICATION",
    "FINDINGS": FINDINGS, "EXAMINATION": "EXAMINATION", "TECHNIQUE": "TECHNIQUE",
    "HISTORY": "HISTORY", "COMPARISONS": "COMPARISON", "CLINICAL HISTORY": "HISTORY",
    "REASON FOR EXAMINATION": "INDICATION", "NOTIFICATION": "NOTIFICATION",
    "REASON FOR EXAM": "INDICATION", "CLINICAL INFORMATION": "HISTORY", "EXAM": "EXAMINATION",
    "CLINICAL INDICATION": "INDICATION", "CONCLUSION": IMPRESSION, "CHEST, TWO VIEWS": FINDINGS,
    "RECOMMENDATION(S)": "RECOMMENDATIONS", "TYPE OF EXAMINATION": "EXAMINATION",
    "REFERENCE EXAM": "COMPARISON", "PATIENT HISTORY": "HISTORY", "ADDENDUM": ADDENDUM,
    "COMPARISON EXAM": "COMPARISON", "DATE": "DATE", "COMMENT": "COMMENT",
    "FINDINGS AND IMPRESSION": IMPRESSION, "WET READ": "WET READ", "COMPARISON FILM": "COMPARISON",
    "RECOMMENDATIONS": "RECOMMENDATIONS", "FINDINGS/IMPRESSION": IMPRESSION, "PFI": "HISTORY",
    "RECOMMENDATION": "RECOMMENDATIONS", "WETREAD": "WET READ", "IMPRESSON": IMPRESSION,
    "IMPRRESSION": IMPRESSION, "IMORESSION": IMPRESSION, "IMPRESSOIN": IMPRESSION,
    "IMPRSSION": IMPRESSION, "IMPRESION": IMPRESSION, "IMPERSSION": IMPRESSION,
    "MPRESSION": IMPRESSION, "IMPESSION": IMPRESSION, "FINDINGS/ IMPRESSION": IMPRESSION,
    "FINDING": FINDINGS, "FINDINS": FINDINGS, "FINDINDGS": FINDINGS, "FINDGINGS": FINDINGS,
    "FINDNGS": FINDINGS, "FINDNINGS": FINDINGS, "FINIDNGS": FINDINGS, "IDICATION": "INDICATION",
    "REFERENCE FINDINGS": FINDINGS, "COMPARISION": "COMPARISON", "COMPARSION": "COMPARISON",
    "COMPARRISON": "COMPARISON", "COMPARISIONS": "COMPARISON", "CONCUSION": IMPRESSION,
    "COINCLUSION": IMPRESSION,
}
_MAIN_NAMES = (IMPRESSION, FINDINGS, "HISTORY", "COMPARISON", ADDENDUM)
_MAIN_TEXT = (FINDINGS, IMPRESSION)  # the sections that hold what was seen
# Headers that describe the whole study ("CHEST, PA AND LATERAL:") hold findings.
_STUDY_DESCRIPTION = re.compile(
    r"CHEST|PORTABLE|PA AND LATERAL|LATERAL AND PA|AP AND LATERAL|LATERAL AND AP|FRONTAL AND|"
    r"TWO VIEWS|FRONTAL VIEW|PA VIEW|AP VIEW|ONE VIEW|LATERAL VIEW|BONE WINDOW|FRONTAL UPRIGHT|"
    r"FRONTAL SEMI-UPRIGHT|RIBS|PA AND LAT"
)


@lru_cache(maxsize=4096)  # headers repeat across reports
def normalise_section_name(header: str) -> str:
    name = " ".join(header.upper().split())
    if name in _NAME_MAP:
        return _NAME_MAP[name]
    for main in _MAIN_NAMES:
        if main in name:
            return main
    if _STUDY_DESCRIPTION.search(name):
        return FINDINGS
    return name.replace(" ", "_")


def _headers(body: str) -> list[tuple[int, int, int, str]]:
    """(line start, name start, end, name) of each header line of `body`."""
    first = _FIRST_HEADER.match(body)
    headers = [(0, first.start(1), first.end(), first.group(1))] if first else []
    for match in _LINE_HEADER.finditer(body, first.end() if first else 0):
        headers.append((match.start() + 1, match.start(1), match.end(), match.group(1)))
    return headers


def _headed_sections(text: str, offset: int, end: int) -> list[Section]:
    body = text[offset:end]
    headers = _headers(body)
    if not headers:
        return [Section(FULL_REPORT, offset, end)]
    sections = [Section(PREAMBLE, offset, offset + headers[0][1])]
    for i, (_, _, header_end, name) in enumerate(headers):
        section_end = headers[i + 1][0] if i + 1 < len(headers) else len(body)
        sections.append(Section(normalise_section_name(name), offset + header_end, offset + section_end))
    return sections


def _last_paragraph(text: str, last: Section) -> tuple[Section, Section]:
    """Split the last section after its first paragraph (blank line), as the reference parser does."""
    body = text[last.start : last.end]
    lead = len(body) - len(body.lstrip())
    blank = _BLANK_LINE.search(body, lead)
    if blank is None or not body[blank.end() :].strip():
        return Section(last.name, last.start, last.start), Section(LAST_PARAGRAPH, last.start, last.end)
    split = last.start + blank.end()
    return Section(last.name, last.start, split), Section(LAST_PARAGRAPH, split, last.end)


def parse_sections(text: str) -> list[Section]:
    """Sections of a report in text order; empty FINDINGS/IMPRESSION sections are dropped."""
    sections: list[Section] = []
    report_start = 0
    underscore = _UNDERSCORE_LINE.search(text) if "_" * 8 in text else None
    if underscore is not None and text[: underscore.start()].strip():
        sections.append(Section(ADDENDUM, 0, underscore.start()))
        report_start = underscore.end()
    sections.extend(_headed_sections(text, report_start, len(text)))
    sections = [
        s for s in sections if s.name not in _MAIN_TEXT or _NON_SPACE.search(text, s.start, s.end) is not None
    ]
    if not any(s.name in _MAIN_TEXT for s in sections):
        head, tail = _last_paragraph(text, sections[-1])
        sections[-1:] = [head, tail] if head.end > head.start else [tail]
    return sections


def sentence_sections(sections: list[Section]) -> list[Section]:
    """The sections sentences are numbered over: FINDINGS then IMPRESSION, else LAST_PARAGRAPH."""
    chosen = [s for s in sections if s.name == FINDINGS] + [s for s in sections if s.name == IMPRESSION]
    return chosen or [s for s in sections if s.name == LAST_PARAGRAPH]
