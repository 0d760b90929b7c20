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
from dataclasses import dataclass

FINDINGS = "FINDINGS"
IMPRESSION = "IMPRESSION"
LAST_PARAGRAPH = "LAST_PARAGRAPH"
PREAMBLE = "PREAMBLE"
ADDENDUM = "ADDENDUM"
FULL_REPORT = "FULL_REPORT"


@dataclass(frozen=True)
class Section:
    name: str  # normalised, upper case: 'FINDINGS', 'IMPRESSION', 'LAST_PARAGRAPH', ...
    start: int  # char offsets of the section's text (after its header) in the report
    end: int


_HEADER = re.compile(r"(?m)^[ \t]*([A-Z][A-Z ()/,&-]*[A-Z)])[ \t]*:")
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
# Headers that describe the whole study ("CHEST, PA AND LATERAL:") hold findings.
_STUDY_DESCRIPTION = re.compile(
    r"CHEST|PORTABLE|PA AND LATERAL|LATERAL AND PA|AP AND LATERAL|LATERAL AND AP|FRONTAL AND|"
    r"TWO VIEWS|FRONTAL VIEW|PA VIEW|AP VIEW|ONE VIEW|LATERAL VIEW|BONE WINDOW|FRONTAL UPRIGHT|"
    r"FRONTAL SEMI-UPRIGHT|RIBS|PA AND LAT"
)


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


def _headed_sections(text: str, offset: int, end: int) -> list[Section]:
    body = text[offset:end]
    headers = list(_HEADER.finditer(body))
    if not headers:
        return [Section(FULL_REPORT, offset, end)]
    sections = [Section(PREAMBLE, offset, offset + headers[0].start(1))]
    for i, header in enumerate(headers):
        section_end = headers[i + 1].start() if i + 1 < len(headers) else len(body)
        sections.append(
            Section(normalise_section_name(header.group(1)), offset + header.end(), offset + section_end)
        )
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
    underscore = _UNDERSCORE_LINE.search(text)
    if underscore is not None and text[: underscore.start()].strip():
        sections.append(Section(ADDENDUM, 0, underscore.start()))
        report_start = underscore.end()
    sections.extend(_headed_sections(text, report_start, len(text)))
    sections = [
        s for s in sections if s.name not in (FINDINGS, IMPRESSION) or text[s.start : s.end].strip()
    ]
    if not any(s.name in (FINDINGS, IMPRESSION) for s in sections):
        head, tail = _last_paragraph(text, sections[-1])
        sections[-1:] = [head, tail] if head.end > head.start else [tail]
    return sections


def sentence_sections(sections: list[Section]) -> list[Section]:
    """The sections sentences are numbered over: FINDINGS then IMPRESSION, else LAST_PARAGRAPH."""
    chosen = [s for s in sections if s.name == FINDINGS] + [s for s in sections if s.name == IMPRESSION]
    return chosen or [s for s in sections if s.name == LAST_PARAGRAPH]
