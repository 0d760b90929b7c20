"""Sections and sentence splitting on MIMIC-CXR-shaped reports."""
from transforms.sections import Section, parse_sections
from transforms.sentences import split_sentences

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___ year old woman with ?pleural effusion  // ?pleural effusion
 
 TECHNIQUE:  Chest PA and lateral
 
 COMPARISON:  ___
 
 FINDINGS: 
 
 Cardiac size cannot be evaluated.  Large left pleural effusion is new.  Small
 right effusion is new.  The upper lungs are clear.  Right lower lobe opacities
 are better seen in prior CT.  There is no pneumothorax.  There are mild
 degenerative changes in the thoracic spine
 
 IMPRESSION: 
 
 Large left pleural effusion
"""


def _names(text):
    return [s.name for s in parse_sections(text)]


def test_mimic_report_sections_and_offsets():
    sections = parse_sections(MIMIC_REPORT)
    assert [s.name for s in sections] == [
        "PREAMBLE", "EXAMINATION", "INDICATION", "TECHNIQUE", "COMPARISON", "FINDINGS", "IMPRESSION"
    ]
    by_name = {s.name: s for s in sections}
    assert MIMIC_REPORT[by_name["IMPRESSION"].start : by_name["IMPRESSION"].end].strip() == "Large left pleural effusion"
    assert "FINAL REPORT" in MIMIC_REPORT[by_name["PREAMBLE"].start : by_name["PREAMBLE"].end]
    assert all(isinstance(s, Section) and s.start <= s.end for s in sections)


def test_sentences_numbered_across_findings_and_impression_with_line_wraps():
    sentences = split_sentences(MIMIC_REPORT, parse_sections(MIMIC_REPORT))
    assert [s.sent_idx for s in sentences] == list(range(8))
    assert [s.section for s in sentences] == ["FINDINGS"] * 7 + ["IMPRESSION"]
    assert sentences[2].text == "Small\n right effusion is new."
    assert sentences[6].text.startswith("There are mild") and sentences[7].text == "Large left pleural effusion"
    for s in sentences:
        assert MIMIC_REPORT[s.char_start : s.char_end] == s.text


def test_addendum_on_top_is_its_own_section():
    text = (
        " ADDENDUM: Findings were discussed with Dr. ___ at 3 pm.\n"
        " ______________________________________________________________________________\n"
        "                                 FINAL REPORT\n"
        " FINDINGS:  No pneumothorax.\n \n IMPRESSION:  No acute process.\n"
    )
    names = _names(text)
    assert names[0] == "ADDENDUM" and names[-2:] == ["FINDINGS", "IMPRESSION"]
    sentences = split_sentences(text, parse_sections(text))
    assert [s.text for s in sentences] == ["No pneumothorax.", "No acute process."]


def test_header_synonyms_and_typos_are_normalised():
    text = " REASON FOR EXAMINATION:  cough\n \n FINDNGS:  Clear lungs.\n \n CONCLUSION:  Normal chest.\n"
    assert _names(text) == ["PREAMBLE", "INDICATION", "FINDINGS", "IMPRESSION"]


def test_last_paragraph_fallback_when_no_findings_or_impression():
    text = (
        " EXAMINATION:  CHEST PORTABLE AP\n \n INDICATION:  intubated\n"
        " \n ET tube ends 4 cm above the carina.  No pneumothorax.\n"
    )
    sections = parse_sections(text)
    assert sections[-1].name == "LAST_PARAGRAPH"
    sentences = split_sentences(text, sections)
    assert [s.text for s in sentences] == ["ET tube ends 4 cm above the carina.", "No pneumothorax."]
    assert {s.section for s in sentences} == {"LAST_PARAGRAPH"}


def test_empty_findings_section_is_dropped():
    text = " FINDINGS: \n \n IMPRESSION:  Small left effusion.\n"
    assert "FINDINGS" not in _names(text)


def test_headerless_text_is_read_whole():
    text = "Small left effusion. No pneumothorax."
    sentences = split_sentences(text, parse_sections(text))
    assert [s.text for s in sentences] == ["Small left effusion.", "No pneumothorax."]


def test_numbered_lists_abbreviations_decimals_and_blanks():
    text = (
        " IMPRESSION: \n \n 1. Large left pleural effusion, approx. 2.5 cm, R. lung clear.\n"
        " 2. Dr. ___ was notified by ___ at 3 pm.  Compare with prior CT.\n"
        " 3. No pneumothorax. 4. Stable cardiomegaly.\n"
    )
    sentences = split_sentences(text, parse_sections(text))
    assert [s.text for s in sentences] == [
        "Large left pleural effusion, approx. 2.5 cm, R. lung clear.",
        "Dr. ___ was notified by ___ at 3 pm.",
        "Compare with prior CT.",
        "No pneumothorax.",
        "Stable cardiomegaly.",
    ]
    for s in sentences:
        assert text[s.char_start : s.char_end] == s.text
