"""Report text for the synthetic corpus: MIMIC-CXR-shaped free text written from a study's facts.

The word lists and templates below exist only to make varied, realistic synthetic reports; they are
not pipeline vocabulary (the structurer has its own, in configs/) and nothing else imports them.
Every lesion word a report contains states one of the study's facts; other sentences (devices,
bones, pneumothorax, vascular congestion, hilar contours) carry no lesion type on purpose.
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas.vocab import Certainty, LesionType, Location, Presence

REPORT_WIDTH = 79  # MIMIC-CXR lines are at most 79 characters, each starting with a space
HEADER = " " * 33 + "FINAL REPORT"
ADDENDUM_HEADER = " " * 33 + "FINAL ADDENDUM"
ADDENDUM_RULE = " " + "_" * (REPORT_WIDTH - 1)

L = Location

# Phrases naming a set of locations: (adjective form, prepositional form). Keys are sorted tuples of
# Location values; the mapping follows DESIGN.md §2 (lower lobe -> base, lingula -> left mid zone,
# retrocardiac -> left base, perihilar -> both mid zones, upper lobe -> upper zone).
LOCATION_PHRASES: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {
    (L.RIGHT_BASE,): (
        ("right lower lobe", "in the right lower lobe"),
        ("right basilar", "at the right lung base"),
        ("right base", "at the right base"),
    ),
    (L.LEFT_BASE,): (
        ("left lower lobe", "in the left lower lobe"),
        ("left basilar", "at the left lung base"),
        ("retrocardiac", "in the retrocardiac region"),
    ),
    (L.LEFT_BASE, L.RIGHT_BASE): (
        ("bibasilar", "at both lung bases"),
        ("bilateral lower lobe", "in both lower lobes"),
        ("bibasilar", "at the lung bases"),
    ),
    (L.LEFT_MID,): (("lingular", "in the lingula"), ("left mid lung", "in the left mid lung")),
    (L.RIGHT_MID,): (("right middle lobe", "in the right middle lobe"), ("right mid lung", "in the right mid lung")),
    (L.RIGHT_UPPER,): (
        ("right upper lobe", "in the right upper lobe"), ("right upper lung", "in the right upper lung"),
    ),
    (L.LEFT_UPPER,): (("left upper lobe", "in the left upper lobe"), ("left upper lung", "in the left upper lung")),
    (L.RIGHT_APICAL,): (("right apical", "at the right apex"),),
    (L.LEFT_APICAL,): (("left apical", "at the left apex"),),
    (L.LEFT_MID, L.RIGHT_MID): (
        ("perihilar", "in the perihilar regions"), ("bilateral perihilar", "in both perihilar regions"),
    ),
    (L.RIGHT_LUNG,): (("right-sided", "in the right lung"), ("right lung", "in the right lung")),
    (L.LEFT_LUNG,): (("left-sided", "in the left lung"), ("left lung", "in the left lung")),
    (L.LEFT_LUNG, L.RIGHT_LUNG): (("bilateral", "in both lungs"),),
}

# Effusion sides: Location tuple -> side phrases (both sides have their own wording below).
EFFUSION_SIDES: dict[tuple[str, ...], tuple[str, ...]] = {
    (L.RIGHT_LUNG,): ("right", "right-sided"),
    (L.LEFT_LUNG,): ("left", "left-sided"),
}

# Lesion nouns per type. Synonyms used by these reports, for whoever aligns the structurer:
# effusion: pleural effusion(s), effusion(s), pleural fluid; cardiomegaly: cardiomegaly, enlarged
# cardiac silhouette, enlargement of the cardiac silhouette, heart is enlarged; opacity: opacity,
# opacities, opacification, airspace opacity, airspace disease, haziness; consolidation:
# consolidation; pneumonia: pneumonia; atelectasis: atelectasis (plate-like, subsegmental);
# edema: pulmonary edema, interstitial edema, alveolar edema, edema.
# "pulmonary vascular congestion" appears as a distractor and is never edema.
SEVERITY_WORDS = {
    LesionType.EFFUSION: ((0.15, ("trace", "small")), (0.4, ("small",)), (0.7, ("moderate", "small to moderate")),
                          (1.01, ("large", "moderate to large"))),
    LesionType.CARDIOMEGALY: ((0.35, ("mild",)), (0.7, ("moderate",)), (1.01, ("severe", "marked"))),
    LesionType.EDEMA: ((0.35, ("mild",)), (0.7, ("moderate",)), (1.01, ("severe",))),
}
ADVERBS = {"mild": "mildly", "moderate": "moderately", "severe": "severely", "marked": "markedly"}

OPACITY_ADJECTIVES = ("", "", "patchy ", "hazy ", "ill-defined ", "faint ")

# Hedges leave a finding uncertain; "likely", "probable" and "consistent with" report it (definite),
# as the project's structurer reads them (configs/vocabularies/en_cxr.yaml).
DEFINITE_FRAMES = (
    "{NP}.", "There {be} {art}{np}.", "{NP} {be} present.", "{NP} {be} seen.", "{NP} {be} noted.", "Likely {np}.",
    "Probable {np}.",
)
UNCERTAIN_FRAMES = (
    "Possible {np}.", "{NP} cannot be excluded.", "Questionable {np}.", "{NP} {be} suspected.",
    "Findings may represent {art}{np}.",
)
CHANGE_FRAMES = {
    "unchanged": (
        "Unchanged {np}.", "The {np} {be} unchanged.", "Stable {np}.", "The {np} {be} similar to the prior exam.",
    ),
    "new": ("New {np}.", "{NP} {be} new."),
    "increased": ("Increased {np}.", "Interval increase in {np}.", "The {np} {have} increased."),
    "decreased": ("Decreased {np}.", "Interval decrease in {np}.", "Improving {np}.", "The {np} {have} decreased."),
}
RESOLVED_FRAMES = (
    "Previously seen {np} {have} resolved.", "Interval resolution of the {np}.",
    "The previously noted {np} {be} no longer seen.",
)
# A definite finding and its readings, keyed by the readings' certainties.
READING_FRAMES = {
    (Certainty.UNCERTAIN,): ("{NP} may represent {i1}.", "{NP} concerning for {i1}.", "{NP}; {i1} cannot be excluded.",
                             "{NP}, which could represent {i1}."),
    (Certainty.DEFINITE,): ("{NP}, likely {i1}.", "{NP} likely reflects {i1}.", "{NP} consistent with {i1}."),
    (Certainty.UNCERTAIN, Certainty.UNCERTAIN): ("{NP}, {i1} versus {i2}.", "{NP} may represent {i1} or {i2}."),
    (Certainty.DEFINITE, Certainty.UNCERTAIN): ("{NP} likely reflects {i1}, though {i2} cannot be excluded.",),
}
VERSUS_FRAMES = ("{LOC} {a} versus {b}.", "{A} versus {b} {pp}.")

# Absent findings: the words a negation list uses per type, and whole sentences for a single type.
NEGATED_NOUNS = {
    LesionType.EFFUSION: ("pleural effusion", "effusion"),
    LesionType.CONSOLIDATION: ("focal consolidation", "consolidation"),
    LesionType.EDEMA: ("pulmonary edema", "edema"),
    LesionType.PNEUMONIA: ("pneumonia",),
    LesionType.OPACITY: ("focal opacity", "airspace opacity"),
    LesionType.ATELECTASIS: ("atelectasis",),
}
NEGATION_LIST_FRAMES = (
    "No {items}.", "There is no {items}.", "The lungs are clear without {items}.", "No evidence of {items}.",
)
NEGATION_SENTENCES = {
    LesionType.EFFUSION: (
        "No pleural effusion or pneumothorax.", "There is no pleural effusion.", "No pleural effusions.",
        "No pleural fluid.",
    ),
    LesionType.CONSOLIDATION: ("No focal consolidation.", "There is no focal consolidation.",
                               "The lungs are clear without evidence of consolidation."),
    LesionType.EDEMA: ("No pulmonary edema.", "There is no pulmonary edema.",
                       "Mild pulmonary vascular congestion without frank pulmonary edema."),
    LesionType.PNEUMONIA: ("No evidence of pneumonia.", "No radiographic evidence of pneumonia."),
    LesionType.OPACITY: ("No focal opacity.", "No focal airspace opacity is seen."),
    LesionType.ATELECTASIS: ("No atelectasis.", "No evidence of atelectasis."),
    LesionType.CARDIOMEGALY: ("Heart size is normal.", "The heart is normal in size.", "No cardiomegaly.",
                              "Normal cardiac silhouette.", "The cardiac silhouette is not enlarged.",
                              "Heart size and mediastinal contours are normal."),
}
PAIRED_NEGATIONS = {
    (LesionType.CONSOLIDATION, LesionType.PNEUMONIA): ("No focal consolidation to suggest pneumonia.",
                                                       "There is no consolidation concerning for pneumonia."),
}
CLEAR_LUNGS = ("The lungs are clear.", "Lungs are clear.", "The lungs are well expanded and clear.")
NORMAL_IMPRESSIONS = ("No acute cardiopulmonary process.", "No acute intrathoracic process.",
                      "No acute cardiopulmonary abnormality.")
# Global statements that deny lesion types without naming them (the structurer reads them so):
# phrase (lower case) -> the lesion types it reports absent.
IMPLIED_ABSENT = {
    "no acute cardiopulmonary process": tuple(LesionType),
    "no acute intrathoracic process": tuple(LesionType),
    "no acute cardiopulmonary abnormality": tuple(LesionType),
    "lungs are clear": (LesionType.PNEUMONIA, LesionType.ATELECTASIS, LesionType.OPACITY, LesionType.CONSOLIDATION,
                        LesionType.EDEMA),
    "lungs are well expanded and clear": (LesionType.PNEUMONIA, LesionType.ATELECTASIS, LesionType.OPACITY,
                                          LesionType.CONSOLIDATION, LesionType.EDEMA),
}

DISTRACTORS = (
    "No pneumothorax.", "There is no pneumothorax.", "The mediastinal and hilar contours are normal.",
    "Pulmonary vasculature is normal.", "Mild pulmonary vascular congestion.", "Osseous structures are intact.",
    "No acute osseous abnormality.", "There are mild degenerative changes in the thoracic spine.",
    "Atherosclerotic calcification of the aortic knob.", "The aorta is tortuous.",
    "The visualized upper abdomen is unremarkable.", "Lung volumes are low.",
)
DEVICE_SENTENCES = {
    "ecg_leads": ("Cardiac monitoring leads overlie the chest.", "ECG leads are noted."),
    "central_line": ("Right internal jugular central venous catheter terminates in the mid SVC.",
                     "A right-sided central line tip projects over the cavoatrial junction."),
    "endotracheal_tube": ("Endotracheal tube tip terminates approximately ___ cm above the carina.",
                          "The endotracheal tube is in standard position."),
    "enteric_tube": ("An enteric tube courses below the diaphragm, tip in the stomach.",
                     "Nasogastric tube tip is in the stomach."),
    "sternotomy_wires": ("Median sternotomy wires are intact.", "The patient is status post median sternotomy."),
    "pacemaker": ("Left chest wall pacemaker with lead in the right ventricle.",
                  "A left-sided pacemaker device is unchanged in position."),
}
INDICATIONS = (
    "___ year old {sex} with ?pleural effusion  // ?pleural effusion",
    "___ year old {sex} with fever and cough  // eval for pneumonia",
    "History: ___{s} with shortness of breath",
    "___-year-old {sex} with chest pain.  Evaluate for acute process.",
    "___ year old {sex} with CHF exacerbation  // eval for edema",
    "___ year old {sex} s/p line placement  // line placement",
    "___{s} with hypoxia  // interval change",
    "___ year old {sex} with weakness  // ?acute process",
)
COMPARISONS_WITH_PRIOR = ("___", "Chest radiograph ___", "Prior exam from ___.", "___.")
COMPARISONS_WITHOUT = ("None.", "None available.", "No prior studies available.")
ADDENDA = (
    "Findings were discussed with Dr. ___ by Dr. ___ by telephone at ___ on ___.",
    "The study was reviewed with the referring clinician at ___ on ___.",
    "Correction: the comparison study is dated ___.",
)


@dataclass(frozen=True)
class Fact:
    """One reported fact about a lesion type (a row of the ground-truth findings, before images)."""

    target: str  # LesionType value
    presence: str  # Presence value
    certainty: str  # Certainty value
    locations: tuple[str, ...] = ()  # sorted Location values the report names (empty: none named)
    severity: float = 0.5  # 0..1, worded as small / moderate / large etc. where the type has sizes
    change: str = ""  # '', 'new', 'unchanged', 'increased', 'decreased', 'resolved'


@dataclass(frozen=True)
class Mention:
    """Facts stated in one breath about one abnormality.

    One fact: a plain statement. Several, the first definite: the finding and hedged (or confirmed)
    readings of it ("opacity, likely atelectasis"). Several, all uncertain: "atelectasis versus
    pneumonia". All facts of a mention share its locations.
    """

    facts: tuple[Fact, ...]


@dataclass(frozen=True)
class ReportContext:
    examination: str  # e.g. 'CHEST (PA AND LAT)'
    technique: str
    has_prior: bool
    devices: tuple[str, ...] = ()
    layout: str = "full"  # 'full' | 'impression_only' | 'last_paragraph'
    addendum: bool = False
    sex: str = "woman"  # 'woman' | 'man'


@dataclass(frozen=True)
class _Phrase:
    text: str
    plural: bool = False
    countable: bool = False  # takes "a" / "an"


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _severity_word(rng: np.random.Generator, target: str, severity: float) -> str:
    for limit, words in SEVERITY_WORDS[LesionType(target)]:
        if severity < limit:
            return _pick(rng, words)
    return ""


def _location(rng: np.random.Generator, locations: tuple[str, ...]) -> tuple[str, str]:
    return _pick(rng, LOCATION_PHRASES[tuple(sorted(locations))])


def _lesion_phrase(rng: np.random.Generator, fact: Fact, sized: bool = True) -> _Phrase:
    """A noun phrase naming the fact's lesion, its locations and (if `sized`) its severity."""
    target = LesionType(fact.target)
    if target == LesionType.EFFUSION:
        size = f"{_severity_word(rng, target, fact.severity)} " if sized else ""
        if len(fact.locations) == 2 and not sized:
            return _Phrase("bilateral pleural effusions", plural=True)
        if len(fact.locations) == 2:
            return _Phrase(
                _pick(rng, (f"{size}bilateral pleural effusions", f"{size}bilateral effusions",
                            f"{size}bilateral pleural effusions, right greater than left",
                            f"{size}right greater than left pleural effusions",
                            f"{size}bilateral pleural effusions, left greater than right")),
                plural=True,
            )
        side = _pick(rng, EFFUSION_SIDES[fact.locations])
        if size and rng.random() < 0.15:
            return _Phrase(f"{size}amount of {side.split('-')[0]} pleural fluid", countable=True)
        noun = _pick(rng, ("pleural effusion", "pleural effusion", "effusion"))
        return _Phrase(f"{size}{side} {noun}", countable=True)
    if target == LesionType.CARDIOMEGALY:
        sev = _severity_word(rng, target, fact.severity) if sized else ""
        options = [_Phrase(f"{sev} cardiomegaly".strip()),
                   _Phrase(f"{sev} enlargement of the cardiac silhouette".strip())]
        if sev:
            options.append(_Phrase(f"{ADVERBS[sev]} enlarged cardiac silhouette", countable=True))
        return _pick(rng, options)
    if target == LesionType.EDEMA:
        sev = f"{_severity_word(rng, target, fact.severity)} " if sized else ""
        kind = _pick(rng, ("pulmonary edema", "interstitial edema", "interstitial pulmonary edema", "pulmonary edema"))
        if sized and fact.severity >= 0.7:
            kind = _pick(rng, (kind, "alveolar edema"))
        if fact.locations:
            adjective, _ = _location(rng, fact.locations)
            return _Phrase(f"{sev}{adjective} {kind}")
        return _Phrase(f"{sev}{kind}")

    adjective, prepositional = _location(rng, fact.locations) if fact.locations else ("", "")
    if target == LesionType.OPACITY:
        adj = _pick(rng, OPACITY_ADJECTIVES)
        options = [
            _Phrase(f"{adj}{adjective} opacity", countable=True),
            _Phrase(f"{adj}{adjective} opacities", plural=True),
            _Phrase(f"{adj}opacity {prepositional}", countable=True),
            _Phrase(f"{adjective} airspace opacity", countable=True),
            _Phrase(f"airspace disease {prepositional}"),
            _Phrase(f"{adjective} opacification"),
        ]
        if fact.locations == (L.LEFT_MID, L.RIGHT_MID):
            options.append(_Phrase("perihilar haziness"))
    elif target == LesionType.CONSOLIDATION:
        options = [
            _Phrase(f"{adjective} consolidation"), _Phrase(f"consolidation {prepositional}"),
            _Phrase(f"focal consolidation {prepositional}"), _Phrase(f"dense {adjective} consolidation"),
            _Phrase(f"{adjective} airspace consolidation"),
        ]
    elif target == LesionType.PNEUMONIA:
        options = [_Phrase(f"{adjective} pneumonia"), _Phrase(f"pneumonia {prepositional}")]
    else:
        options = [
            _Phrase(f"{adjective} atelectasis"), _Phrase(f"atelectasis {prepositional}"),
            _Phrase(f"plate-like atelectasis {prepositional}"), _Phrase(f"subsegmental atelectasis {prepositional}"),
            _Phrase(f"mild {adjective} atelectasis"),
        ]
    phrase = _pick(rng, options)
    return _Phrase(" ".join(phrase.text.split()), phrase.plural, phrase.countable)


def _fill_frame(frame: str, phrase: _Phrase, **extra: str) -> str:
    article = ""
    if phrase.countable and not phrase.plural:
        article = "an " if phrase.text[:1] in "aeiou" else "a "
    text = frame.format(
        np=phrase.text, NP=phrase.text[:1].upper() + phrase.text[1:], art=article,
        be="are" if phrase.plural else "is", have="have" if phrase.plural else "has", **extra,
    )
    return text[:1].upper() + text[1:]


def _bare(target: str) -> str:
    """A lesion type's plain noun, as used for a hedged reading of another finding."""
    return {LesionType.PNEUMONIA: "pneumonia", LesionType.ATELECTASIS: "atelectasis", LesionType.EDEMA: "edema",
            LesionType.CONSOLIDATION: "consolidation", LesionType.OPACITY: "opacity",
            LesionType.EFFUSION: "effusion", LesionType.CARDIOMEGALY: "cardiomegaly"}[LesionType(target)]


def _cardiomegaly_sentence(rng: np.random.Generator, fact: Fact) -> str:
    sev = _severity_word(rng, LesionType.CARDIOMEGALY, fact.severity)
    if fact.certainty == Certainty.UNCERTAIN:
        return _pick(rng, (f"The heart is possibly {ADVERBS[sev]} enlarged.", f"Possible {sev} cardiomegaly.",
                           f"{sev.capitalize()} cardiomegaly cannot be excluded."))
    if fact.change:
        return _fill_frame(_pick(rng, CHANGE_FRAMES[fact.change]), _lesion_phrase(rng, fact))
    return _pick(rng, (f"The heart is {ADVERBS[sev]} enlarged.", f"{sev.capitalize()} cardiomegaly.",
                       f"There is {sev} enlargement of the cardiac silhouette.",
                       f"The cardiac silhouette is {ADVERBS[sev]} enlarged.", "Enlarged cardiac silhouette."))


def mention_sentence(rng: np.random.Generator, mention: Mention) -> str:
    """One sentence stating every fact of a mention."""
    facts = mention.facts
    main = facts[0]
    if main.presence == Presence.ABSENT:
        phrase = _lesion_phrase(rng, main, sized=False)
        if main.change == "resolved":
            return _fill_frame(_pick(rng, RESOLVED_FRAMES), phrase)
        return _fill_frame("No {np}.", phrase)
    if len(facts) == 1:
        if main.target == LesionType.CARDIOMEGALY:
            return _cardiomegaly_sentence(rng, main)
        phrase = _lesion_phrase(rng, main)
        if main.certainty == Certainty.UNCERTAIN:
            return _fill_frame(_pick(rng, UNCERTAIN_FRAMES), phrase)
        if main.change:
            return _fill_frame(_pick(rng, CHANGE_FRAMES[main.change]), phrase)
        return _fill_frame(_pick(rng, DEFINITE_FRAMES), phrase)
    readings = facts[1:]
    if main.certainty == Certainty.DEFINITE:
        phrase = _lesion_phrase(rng, main)
        nouns = {f"i{k + 1}": _bare(f.target) for k, f in enumerate(readings)}
        frames = READING_FRAMES[tuple(Certainty(f.certainty) for f in readings)]
        if readings[0].target != LesionType.PNEUMONIA:
            frames = tuple(f for f in frames if "concerning" not in f and "consistent" not in f) or frames
        return _fill_frame(_pick(rng, frames), phrase, **nouns)
    adjective, prepositional = _location(rng, main.locations)
    a, b = _bare(facts[0].target), _bare(facts[1].target)
    text = _pick(rng, VERSUS_FRAMES).format(LOC=adjective, a=a, b=b, A=a, pp=prepositional)
    return text[:1].upper() + text[1:]


def negation_sentences(rng: np.random.Generator, targets: Sequence[str], lungs_clear: bool) -> list[str]:
    """Sentences that negate each of `targets` (lesion types absent from the whole study).

    `lungs_clear` allows "the lungs are clear ..." wordings (not when a lung finding is reported).
    """
    def usable(options: Sequence[str]) -> list[str]:
        return [o for o in options if lungs_clear or "clear" not in o]

    remaining = list(targets)
    rng.shuffle(remaining)
    sentences = []
    for pair, options in PAIRED_NEGATIONS.items():
        if all(t in remaining for t in pair) and rng.random() < 0.6:
            sentences.append(_pick(rng, options))
            remaining = [t for t in remaining if t not in pair]
    if LesionType.CARDIOMEGALY in remaining:
        sentences.append(_pick(rng, NEGATION_SENTENCES[LesionType.CARDIOMEGALY]))
        remaining.remove(LesionType.CARDIOMEGALY)
    while remaining:
        if len(remaining) >= 2 and rng.random() < 0.7:
            size = min(len(remaining), int(rng.integers(2, 4)))
            group, remaining = remaining[:size], remaining[size:]
            items = [_pick(rng, NEGATED_NOUNS[LesionType(t)]) for t in group]
            if rng.random() < 0.5:
                items.append("pneumothorax")
            joint = " or " if len(items) == 2 else _pick(rng, (", or ", " or "))
            listed = ", ".join(items[:-1]) + joint + items[-1]
            sentences.append(_pick(rng, usable(NEGATION_LIST_FRAMES)).format(items=listed))
        else:
            sentences.append(_pick(rng, usable(NEGATION_SENTENCES[LesionType(remaining.pop(0))])))
    return sentences


def _wrap(text: str, first_prefix: str = "") -> list[str]:
    lines = textwrap.wrap(first_prefix + text, width=REPORT_WIDTH - 1, break_long_words=False, break_on_hyphens=False)
    return [" " + line for line in lines]


def _section(title: str, paragraphs: Sequence[str], inline: bool, blank_between: bool = True) -> list[str]:
    """A titled section: the title alone on its line (then a blank line) or followed by the text."""
    gap = [" "] if blank_between else []
    if inline:
        lines = _wrap(paragraphs[0], f"{title}:  ")
    else:
        lines = [f" {title}: ", " "] + _wrap(paragraphs[0])
    for paragraph in paragraphs[1:]:
        lines += gap + _wrap(paragraph)
    return lines


def implied_absent(text: str) -> tuple[str, ...]:
    """Lesion types a report denies through global statements ("No acute cardiopulmonary process.")."""
    lowered = " ".join(text.lower().split())
    found = {str(t) for phrase, types in IMPLIED_ABSENT.items() if phrase in lowered for t in types}
    return tuple(str(t) for t in LesionType if str(t) in found)


def render_report(rng: np.random.Generator, mentions: Sequence[Mention], context: ReportContext) -> str:
    """The full report text of a study (lines <= 79 characters, each starting with a space).

    `mentions` holds every fact of the study: present ones as their mentions, absent ones as
    single-fact mentions (those without locations are merged into negation sentences). A study
    without present findings also gets a normal impression; `implied_absent` lists what that denies.
    """
    present = [m for m in mentions if m.facts[0].presence == Presence.PRESENT]
    located_absent = [m for m in mentions if m.facts[0].presence == Presence.ABSENT and m.facts[0].locations
                      and m.facts[0].target != LesionType.CARDIOMEGALY]
    negated = [m.facts[0].target for m in mentions
               if m.facts[0].presence == Presence.ABSENT and m not in located_absent]

    lung_sentences = [mention_sentence(rng, m) for m in present]
    # two plain definite findings are often said in one sentence
    plain = [k for k, m in enumerate(present) if len(m.facts) == 1 and m.facts[0].certainty == Certainty.DEFINITE
             and not m.facts[0].change and m.facts[0].target != LesionType.CARDIOMEGALY]
    if len(plain) >= 2 and rng.random() < 0.4:
        first, second = (_lesion_phrase(rng, present[k].facts[0]) for k in plain[:2])
        joined = f"{first.text[:1].upper()}{first.text[1:]} and {second.text}."
        lung_sentences = [s for k, s in enumerate(lung_sentences) if k not in plain[:2]] + [joined]
    lung_sentences += [mention_sentence(rng, m) for m in located_absent]
    lungs_clear = all(m.facts[0].target == LesionType.CARDIOMEGALY for m in present)
    lung_sentences += negation_sentences(rng, negated, lungs_clear)
    rng.shuffle(lung_sentences)
    distractors = [str(d) for d in rng.choice(DISTRACTORS, size=int(rng.integers(1, 4)), replace=False)]
    # at most one remark on the vessels, and none beside an edema sentence that already makes one
    said_vessels = any("vascula" in s for s in lung_sentences)
    vessel_remarks = [d for d in distractors if "vascula" in d]
    distractors = [d for d in distractors if "vascula" not in d] + ([] if said_vessels else vessel_remarks[:1])
    device_lines = [_pick(rng, DEVICE_SENTENCES[d]) for d in context.devices]
    findings = [" ".join(device_lines)] if device_lines else []
    body = lung_sentences + distractors
    rng.shuffle(body)
    if lungs_clear and rng.random() < 0.6:
        body.insert(0, _pick(rng, CLEAR_LUNGS))
    findings.append("  ".join(body))

    numbered = False
    if present:
        statements = [mention_sentence(rng, m) for m in present]
        numbered = len(statements) > 1 and rng.random() < 0.3
        impression = [f"{k + 1}.  {s}" for k, s in enumerate(statements)] if numbered else ["  ".join(statements)]
    else:
        impression = [_pick(rng, NORMAL_IMPRESSIONS)]

    sex = context.sex
    indication = _pick(rng, INDICATIONS).format(sex=sex, s="F" if sex == "woman" else "M")
    comparison = _pick(rng, COMPARISONS_WITH_PRIOR if context.has_prior else COMPARISONS_WITHOUT)
    lines: list[str] = []
    if context.addendum:
        lines += [ADDENDUM_HEADER] + _wrap(_pick(rng, ADDENDA), "ADDENDUM:  ") + [" ", ADDENDUM_RULE]
    lines += [HEADER]
    lines += _wrap(context.examination, "EXAMINATION:  ") + [" "]
    lines += _wrap(indication, "INDICATION:  ") + [" "]
    lines += _wrap(context.technique, "TECHNIQUE:  ") + [" "]
    lines += _wrap(comparison, "COMPARISON:  ") + [" "]
    if context.layout == "full":
        lines += _section("FINDINGS", findings, inline=rng.random() < 0.2) + [" "]
        lines += _section("IMPRESSION", impression, inline=False, blank_between=not numbered)
    elif context.layout == "impression_only":
        lines += _section("IMPRESSION", findings if present else findings + impression, inline=rng.random() < 0.2)
    else:  # the findings are only the report's last paragraph
        lines += _wrap(f"{context.technique.rstrip('.')} obtained.") + [" "]
        lines += _wrap("  ".join(findings if present else findings + impression))
    return "\n".join(lines) + "\n"
