"""Rule-based report structuring: sentences -> (lesion type, presence, certainty, locations) findings.

A blank English spaCy pipeline with two registered components does the work:
- `cxr_terms` matches every vocabulary phrase (lesions, other findings, assertion cues, clause
  terminators, locations, report-level phrases) with one case-insensitive PhraseMatcher and keeps,
  per layer, the longest of overlapping matches;
- `cxr_assertions` turns the matches of each sentence into mentions: negation and uncertainty cues
  govern the mentions in their clause on their side, alternatives ("X versus Y", "X or Y") make
  both sides uncertain, location phrases attach to the mention they modify.
Everything vocabulary-like lives in configs/vocabularies/<name>.yaml; this file only holds the logic.

Output conventions (documented for the pipeline):
- one Finding per (sentence, lesion type, presence, certainty): mentions of one type with the same
  assertion in one sentence are merged, their locations united, the first mention's offsets kept;
- report-level facts ("no acute cardiopulmonary process", "the lungs are clear") yield absent,
  definite findings without locations for each type their YAML entry lists that the report does not
  mention anywhere else, so an explicit mention ("stable cardiomegaly") always wins;
- cardiomegaly's location is always ('heart',); a mention with no location phrase has ().
"""
from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import spacy
import yaml
from spacy.attrs import IDX
from spacy.language import Language
from spacy.matcher import PhraseMatcher

from configs import VOCABULARY_DIR
from schemas.vocab import LUNG_BY_SIDE, ZONES_BY_SIDE, Certainty, LesionType, Location, Presence
from transforms.records import Finding, Sentence
from transforms.sections import parse_sections
from transforms.sentences import split_sentences

PRE_CUES = ("negation_pre", "uncertainty_pre")
POST_CUES = ("negation_post", "uncertainty_post")
CUE_KINDS = (*PRE_CUES, *POST_CUES, "pseudo", "terminators", "alternatives")
ZONE_INDEX = {"apical": 0, "upper": 1, "mid": 2, "base": 3}
SIDES = ("right", "left")
# How far (tokens) an alternative ("or", "versus") reaches for the mention on each side.
ALTERNATIVE_REACH = 6


@dataclass(frozen=True)
class ReportText:
    report_id: str  # the corpus's own id ('s50414267' for MIMIC-CXR, 'CXR1000' for OpenI)
    study_id: str
    text: str


@dataclass(frozen=True)
class CompoundLesion:
    entity: str
    subjects: tuple[str, ...]
    predicates: dict[str, tuple[str, ...]]  # 'present' | 'uncertain' | 'absent' -> phrases
    max_gap_after: int
    max_gap_before: int


@dataclass(frozen=True)
class ReportLevelFact:
    absent: tuple[str, ...]  # LesionType values
    negated: tuple[str, ...]  # phrases that count when negated
    stated: tuple[str, ...]  # phrases that count as they stand


@dataclass(frozen=True)
class Vocabulary:
    """A validated structuring vocabulary (see configs/vocabularies/en_cxr.yaml for the meaning)."""

    name: str
    lesions: dict[str, tuple[str, ...]]
    not_lesions: tuple[str, ...]
    other_findings: tuple[str, ...]
    compound_lesions: tuple[CompoundLesion, ...]
    cues: dict[str, tuple[str, ...]]
    scope_tokens: int
    report_level: tuple[ReportLevelFact, ...]
    sides: dict[str, tuple[str, ...]]
    zones: dict[str, tuple[str, ...]]
    location_phrases: dict[str, tuple[str, ...]]
    prepositions: frozenset[str]
    determiners: frozenset[str]
    not_locations: tuple[str, ...]
    fixed_locations: dict[str, tuple[str, ...]]
    source: dict = field(repr=False, compare=False, hash=False, default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        lesion_types = {t.value for t in LesionType}
        location_names = {loc.value for loc in Location}

        def phrases(values, where: str) -> tuple[str, ...]:
            if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
                raise ValueError(f"vocabulary: {where} must be a list of non-empty strings")
            return tuple(dict.fromkeys(v.strip() for v in values))

        def types(values, where: str) -> tuple[str, ...]:
            unknown = set(values) - lesion_types
            if unknown:
                raise ValueError(f"vocabulary: {where}: unknown lesion type(s) {sorted(unknown)}")
            return tuple(values)

        def locations(values, where: str) -> tuple[str, ...]:
            unknown = set(values) - location_names
            if unknown:
                raise ValueError(f"vocabulary: {where}: unknown location(s) {sorted(unknown)}")
            return tuple(values)

        types(data.get("lesions", {}), "lesions")
        cues = data.get("cues", {})
        unknown_cues = set(cues) - set(CUE_KINDS) - {"scope_tokens"}
        if unknown_cues:
            raise ValueError(f"vocabulary: unknown cue kind(s) {sorted(unknown_cues)}")
        loc = data.get("locations", {})
        unknown_sides = set(loc.get("sides", {})) - {"right", "left", "both"}
        unknown_zones = set(loc.get("zones", {})) - {*ZONE_INDEX, "lung"}
        if unknown_sides or unknown_zones:
            raise ValueError(f"vocabulary: unknown side/zone key(s) {sorted(unknown_sides | unknown_zones)}")
        return cls(
            name=str(data.get("name", "unnamed")),
            lesions={k: phrases(v, f"lesions.{k}") for k, v in data.get("lesions", {}).items()},
            not_lesions=phrases(data.get("not_lesions", []), "not_lesions"),
            other_findings=phrases(data.get("other_findings", []), "other_findings"),
            compound_lesions=tuple(
                CompoundLesion(
                    entity=types([c["entity"]], "compound_lesions.entity")[0],
                    subjects=phrases(c["subjects"], "compound_lesions.subjects"),
                    predicates={
                        kind: phrases(c.get(kind, []), f"compound_lesions.{kind}")
                        for kind in ("present", "uncertain", "absent")
                    },
                    max_gap_after=int(c.get("max_gap_after", 6)),
                    max_gap_before=int(c.get("max_gap_before", 2)),
                )
                for c in data.get("compound_lesions", [])
            ),
            cues={kind: phrases(cues.get(kind, []), f"cues.{kind}") for kind in CUE_KINDS},
            scope_tokens=int(cues.get("scope_tokens", 12)),
            report_level=tuple(
                ReportLevelFact(
                    absent=types(f["absent"], "report_level.absent"),
                    negated=phrases(f.get("negated", []), "report_level.negated"),
                    stated=phrases(f.get("stated", []), "report_level.stated"),
                )
                for f in data.get("report_level", [])
            ),
            sides={k: phrases(v, f"locations.sides.{k}") for k, v in loc.get("sides", {}).items()},
            zones={k: phrases(v, f"locations.zones.{k}") for k, v in loc.get("zones", {}).items()},
            location_phrases={
                k: locations(v, f"locations.phrases.{k}") for k, v in loc.get("phrases", {}).items()
            },
            prepositions=frozenset(phrases(loc.get("prepositions", []), "locations.prepositions")),
            determiners=frozenset(phrases(loc.get("determiners", []), "locations.determiners")),
            not_locations=phrases(loc.get("not_locations", []), "locations.not_locations"),
            fixed_locations={
                types([k], "locations.fixed")[0]: locations(v, f"locations.fixed.{k}")
                for k, v in loc.get("fixed", {}).items()
            },
            source=data,
        )


class _VocabularyLoader(yaml.SafeLoader):
    """YAML without implicit booleans: the words 'no', 'on', 'yes' are phrases here, not False/True."""


_VocabularyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_vocabulary(name_or_path: str) -> Vocabulary:
    """A vocabulary by name (configs/vocabularies/<name>.yaml) or by path to a YAML file."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = VOCABULARY_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in VOCABULARY_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no vocabulary '{name_or_path}' (a YAML path, or one of {known})")
    with open(path, encoding="utf-8") as handle:
        return Vocabulary.from_dict(yaml.load(handle, Loader=_VocabularyLoader))


# ---------------------------------------------------------------- matching (component `cxr_terms`)

# Layers of matches; within a layer the longest of overlapping matches wins.
LESION, SUBJECT, PREDICATE, CUE, LOCATION, REPORT = range(6)


@dataclass(frozen=True)
class LocationTerm:
    sides: tuple[str, ...] | None  # 'right'/'left'; None when the phrase names no side
    zone: str | None  # a ZONE_INDEX key or 'lung'; None when the phrase names no zone
    fixed: tuple[str, ...] | None  # Location values named outright


def _term_table(vocabulary: Vocabulary) -> dict[str, list[tuple[int, object]]]:
    """phrase (lower case) -> [(layer, payload)]: every phrase the matcher looks for."""
    table: dict[str, list[tuple[int, object]]] = {}

    def add(phrase: str, layer: int, payload: object) -> None:
        entries = table.setdefault(phrase.lower(), [])
        if (layer, payload) not in entries:
            entries.append((layer, payload))

    for entity, phrases in vocabulary.lesions.items():
        for phrase in phrases:
            add(phrase, LESION, entity)
    for phrase in vocabulary.not_lesions:
        add(phrase, LESION, None)
    for phrase in vocabulary.other_findings:
        add(phrase, LESION, "")
    for index, compound in enumerate(vocabulary.compound_lesions):
        for phrase in compound.subjects:
            add(phrase, SUBJECT, index)
        for kind, phrases in compound.predicates.items():
            for phrase in phrases:
                add(phrase, PREDICATE, (index, kind))
    for kind in CUE_KINDS:
        for phrase in vocabulary.cues[kind]:
            add(phrase, CUE, kind)
    for index, fact in enumerate(vocabulary.report_level):
        for phrase in fact.negated:
            add(phrase, REPORT, (index, "negated"))
        for phrase in fact.stated:
            add(phrase, REPORT, (index, "stated"))
    side_sets = {"right": ("right",), "left": ("left",), "both": SIDES}
    for side, side_phrases in vocabulary.sides.items():
        for side_phrase in side_phrases:
            add(side_phrase, LOCATION, LocationTerm(side_sets[side], None, None))
            for zone, zone_phrases in vocabulary.zones.items():
                for zone_phrase in zone_phrases:
                    add(f"{side_phrase} {zone_phrase}", LOCATION, LocationTerm(side_sets[side], zone, None))
    for zone, zone_phrases in vocabulary.zones.items():
        for zone_phrase in zone_phrases:
            add(zone_phrase, LOCATION, LocationTerm(None, zone, None))
    for phrase, names in vocabulary.location_phrases.items():
        add(phrase, LOCATION, LocationTerm(None, None, names))
    for phrase in vocabulary.not_locations:
        add(phrase, LOCATION, None)
    return table


def _longest(matches: list[tuple[int, int, object]]) -> list[tuple[int, int, object]]:
    """Leftmost-longest of overlapping (start, end, payload) matches; equal spans are all kept."""
    matches.sort(key=lambda m: (m[0], -m[1]))
    kept: list[tuple[int, int, object]] = []
    last_start = last_end = -1
    for match in matches:
        start, end = match[0], match[1]
        if start >= last_end:
            kept.append(match)
            last_start, last_end = start, end
        elif start == last_start and end == last_end:
            kept.append(match)
    return kept


class TermMatcher:
    """Finds every vocabulary phrase; `doc.user_data['cxr_terms']` = per-layer lists of matches."""

    def __init__(self, nlp: Language, vocabulary: Vocabulary):
        self.matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
        self.payloads: dict[int, list[tuple[int, object]]] = {}
        table = _term_table(vocabulary)
        phrases = list(table)
        for phrase, pattern in zip(phrases, nlp.tokenizer.pipe(phrases)):
            label = f"cxr:{phrase}"
            self.matcher.add(label, [pattern])
            self.payloads[nlp.vocab.strings[label]] = table[phrase]

    def __call__(self, doc):
        layers: list[list[tuple[int, int, object]]] = [[] for _ in range(6)]
        for key, start, end in self.matcher(doc):
            for layer, payload in self.payloads[key]:
                layers[layer].append((start, end, payload))
        doc.user_data["cxr_terms"] = [_longest(matches) if matches else matches for matches in layers]
        return doc


@Language.factory("cxr_terms", default_config={"vocabulary": {}})
def make_term_matcher(nlp: Language, name: str, vocabulary: dict) -> TermMatcher:
    return TermMatcher(nlp, Vocabulary.from_dict(vocabulary))


# ------------------------------------------------------------ assertions (component `cxr_assertions`)


@dataclass(slots=True)
class Mention:
    entity: str | None  # a LesionType value; '' for other findings; None for report-level phrases
    start: int  # tokens
    end: int
    anchor: int  # the token pre-cues must precede (a compound's predicate)
    sentence: int
    clause: int
    presence: str = Presence.PRESENT.value
    certainty: str = Certainty.DEFINITE.value
    negated: bool = False
    locations: list | None = None  # LocationTerm in token order
    report_fact: tuple[int, str] | None = None  # (fact index, 'negated' | 'stated')
    char_start: int = 0  # in the doc
    char_end: int = 0


_PRESENT, _ABSENT = Presence.PRESENT.value, Presence.ABSENT.value
_DEFINITE, _UNCERTAIN = Certainty.DEFINITE.value, Certainty.UNCERTAIN.value


class AssertionAnnotator:
    """Mentions with presence, certainty and locations; `doc.user_data['cxr_mentions']`.

    Reads sentence spans (doc char offsets) from `doc.user_data['cxr_sentences']`; without them the
    whole doc is one sentence. Work is per clause (a sentence cut at terminators), so a cue or a
    location phrase only ever reaches the mentions of its own clause.
    """

    def __init__(self, vocabulary: Vocabulary):
        self.vocabulary = vocabulary
        self.scope = vocabulary.scope_tokens

    def __call__(self, doc):
        lesions, subjects, predicates, cues, locations, reports = doc.user_data["cxr_terms"]
        if not (lesions or subjects or reports):
            doc.user_data["cxr_mentions"] = []
            return doc
        sentence_spans = doc.user_data.get("cxr_sentences") or [(0, len(doc.text))]
        sentence_starts = [start for start, _ in sentence_spans]
        # Token offsets in one C call: Token objects are the cost on this path.
        token_chars = doc.to_array(IDX).tolist()
        token_chars.append(len(doc.text))

        def sentence_of(token: int) -> int:
            char = token_chars[token]
            index = bisect_right(sentence_starts, char) - 1
            return index if index >= 0 and char < sentence_spans[index][1] else -1

        terminators: dict[int, list[int]] = {}
        active_cues = []
        for start, end, kind in cues:
            sent = sentence_of(start)
            if sent < 0:
                continue
            if kind == "terminators":
                terminators.setdefault(sent, []).append(start)
            elif kind != "pseudo":
                active_cues.append((start, end, kind, sent))

        def clause_of(sent: int, token: int) -> int:
            bounds = terminators.get(sent)
            return bisect_right(bounds, token) if bounds else 0

        mentions: list[Mention] = []
        for start, end, entity in lesions:
            if entity is not None:
                sent = sentence_of(start)
                if sent >= 0:
                    mentions.append(Mention(entity, start, end, start, sent, clause_of(sent, start)))
        if subjects and predicates:
            mentions.extend(self._compound_mentions(subjects, predicates, lesions, sentence_of, clause_of))
        for start, end, fact in reports:
            sent = sentence_of(start)
            if sent >= 0:
                mentions.append(Mention(None, start, end, start, sent, clause_of(sent, start), report_fact=fact))
        mentions.sort(key=lambda m: (m.start, m.end))
        clauses: dict[tuple[int, int], list[Mention]] = {}
        for mention in mentions:
            clauses.setdefault((mention.sentence, mention.clause), []).append(mention)
        for start, end, kind, sent in active_cues:
            governed = clauses.get((sent, clause_of(sent, start)))
            if governed:
                self._apply_cue(start, end, kind, governed)
        if locations:
            self._attach_locations(doc, clauses, locations, sentence_of, clause_of)
        text = doc.text
        for mention in mentions:
            mention.char_start = token_chars[mention.start]
            end = token_chars[mention.end]
            while end > mention.char_start and text[end - 1].isspace():
                end -= 1
            mention.char_end = end
        doc.user_data["cxr_mentions"] = mentions
        return doc

    def _compound_mentions(self, subjects, predicates, lesions, sentence_of, clause_of) -> list[Mention]:
        found = []
        direct = [(s, e) for s, e, entity in lesions if entity]
        for start, end, index in subjects:
            compound = self.vocabulary.compound_lesions[index]
            sent = sentence_of(start)
            if sent < 0:
                continue
            after = before = None
            for predicate in predicates:
                if predicate[2][0] != index or sentence_of(predicate[0]) != sent:
                    continue
                if after is None and end <= predicate[0] <= end + compound.max_gap_after:
                    after = predicate
                elif start - compound.max_gap_before <= predicate[1] <= start:
                    before = predicate
            predicate = after or before
            if predicate is None:
                continue
            span_start, span_end = min(start, predicate[0]), max(end, predicate[1])
            if any(s < span_end and span_start < e for s, e in direct):
                continue
            kind = predicate[2][1]
            found.append(
                Mention(
                    compound.entity, span_start, span_end, predicate[0], sent, clause_of(sent, span_start),
                    presence=_ABSENT if kind == "absent" else _PRESENT,
                    certainty=_UNCERTAIN if kind == "uncertain" else _DEFINITE,
                    negated=kind == "absent",
                )
            )
        return found

    def _apply_cue(self, start: int, end: int, kind: str, clause: list[Mention]) -> None:
        if kind == "alternatives":
            before = [m for m in clause if m.entity is not None and m.end <= start and start - m.end <= ALTERNATIVE_REACH]
            after = [m for m in clause if m.entity is not None and m.start >= end and m.start - end <= ALTERNATIVE_REACH]
            # A differential between two lesion types leaves both uncertain; one with another
            # finding ("atelectasis or scarring") still reports the lesion.
            if before and after and before[-1].entity and after[0].entity:
                if not before[-1].negated and not after[0].negated:
                    before[-1].certainty = after[0].certainty = _UNCERTAIN
            return
        scope = self.scope
        pre = kind in PRE_CUES
        negation = kind.startswith("negation")
        for mention in clause:
            if pre:
                if not (start < mention.anchor and end <= mention.end and mention.anchor - end <= scope):
                    continue
            elif not (start >= mention.end and start - mention.end <= scope):
                continue
            if negation:
                mention.negated = True
                mention.presence = _ABSENT
            else:
                mention.certainty = _UNCERTAIN

    def _attach_locations(self, doc, clauses, locations, sentence_of, clause_of) -> None:
        for start, end, term in locations:
            if term is None:
                continue
            sent = sentence_of(start)
            if sent < 0:
                continue
            same = [m for m in clauses.get((sent, clause_of(sent, start)), ()) if m.entity is not None]
            if not same:
                continue
            chosen = None
            previous = following = None
            for mention in same:
                if mention.start <= start and end <= mention.end:
                    chosen = mention
                    break
                if mention.end <= start:
                    previous = mention
                elif following is None and mention.start >= end:
                    following = mention
            if chosen is None:
                if previous is not None and self._after_preposition(doc, start, previous.end):
                    chosen = previous
                elif following is not None and following.start - end <= self.scope:
                    chosen = following
                else:
                    chosen = previous
            if chosen is not None:
                if chosen.locations is None:
                    chosen.locations = []
                chosen.locations.append(term)

    def _after_preposition(self, doc, start: int, floor: int) -> bool:
        vocabulary = self.vocabulary
        token = start - 1
        while token >= floor and doc[token].lower_ in vocabulary.determiners:
            token -= 1
        if token < floor:
            return False
        word = doc[token].lower_
        return word in vocabulary.prepositions or (
            token - 1 >= floor and f"{doc[token - 1].lower_} {word}" in vocabulary.prepositions
        )


@Language.factory("cxr_assertions", default_config={"vocabulary": {}})
def make_assertion_annotator(nlp: Language, name: str, vocabulary: dict) -> AssertionAnnotator:
    return AssertionAnnotator(Vocabulary.from_dict(vocabulary))


def resolve_locations(terms: list[LocationTerm]) -> tuple[str, ...]:
    """CXAS locations of one mention's location phrases, in text order, sides and zones distributed."""
    result: set[str] = set()
    for i, term in enumerate(terms):
        if term.fixed:
            result.update(term.fixed)
            continue
        sides, zone = term.sides, term.zone
        if sides is None:
            sided = [t.sides for t in terms[:i][::-1] + terms[i + 1 :] if t.sides]
            if not sided and zone == "lung":
                result.add(Location.LUNG.value)
                continue
            sides = sided[0] if sided else SIDES
        if zone is None:
            # "right and left lower lobes", "left greater than right basilar": the zone that follows.
            zoned = [t.zone for t in terms[i + 1 :] if t.zone]
            zone = zoned[0] if zoned else "lung"
        for side in sides:
            if zone == "lung":
                result.add(LUNG_BY_SIDE[side].value)
            else:
                result.add(ZONES_BY_SIDE[side][ZONE_INDEX[zone]].value)
    return tuple(sorted(result))


# ------------------------------------------------------------------------------- the structurer


_LOOSE_SPACE = re.compile(r"[^\S ]|  ")
_WORD_RUN = re.compile(r"\S+")


def _to_text(char: int, doc_starts: list[int], text_starts: list[int]) -> int:
    piece = max(bisect_right(doc_starts, char) - 1, 0)
    return text_starts[piece] + char - doc_starts[piece]


def _in_text_order(sentences: list[Sentence]) -> bool:
    return all(a.char_start < b.char_start for a, b in zip(sentences, sentences[1:]))


def finding_id(report_id: str, sent_idx: int, char_start: int, entity: str) -> str:
    key = f"{report_id}|{sent_idx}|{char_start}|{entity}".encode()
    return hashlib.blake2b(key, digest_size=8).hexdigest()


def build_pipeline(vocabulary: Vocabulary) -> Language:
    """A blank English pipeline with the two structuring components, configured by `vocabulary`."""
    nlp = spacy.blank("en")
    nlp.add_pipe("cxr_terms", config={"vocabulary": vocabulary.source})
    nlp.add_pipe("cxr_assertions", config={"vocabulary": vocabulary.source})
    return nlp


class RuleStructurer:
    """Reports -> findings with spaCy rules; no weights."""

    name = "rules"

    def __init__(self, vocabulary: Vocabulary, batch_size: int = 256):
        self.vocabulary = vocabulary
        self.nlp = build_pipeline(vocabulary)
        self.batch_size = batch_size

    def _docs(self, reports: Sequence[ReportText], sentences: list[list[Sentence]]):
        """One Doc per report: its sentences in text order, joined by one space, white space runs
        inside a sentence collapsed to one space.

        Collapsing lets phrases match across line wraps ("pleural\n effusion"), and headers between
        sections are never tokenized; `cxr_char_map` keeps (doc offsets, report offsets) of each
        piece so mentions map back to the report text.
        """
        for report, sents in zip(reports, sentences):
            doc_starts: list[int] = []
            text_starts: list[int] = []
            parts: list[str] = []
            bounds: list[tuple[int, int]] = []
            cursor = 0
            for sentence in sents if _in_text_order(sents) else sorted(sents, key=lambda s: s.char_start):
                if _LOOSE_SPACE.search(sentence.text) is None:
                    pieces = [(sentence.char_start, sentence.text)]
                else:
                    pieces = [(sentence.char_start + m.start(), m.group()) for m in _WORD_RUN.finditer(sentence.text)]
                sentence_start = cursor
                for start, piece in pieces:
                    doc_starts.append(cursor)
                    text_starts.append(start)
                    parts.append(piece)
                    cursor += len(piece) + 1
                bounds.append((sentence_start, cursor - 1))
            doc = self.nlp.make_doc(" ".join(parts))
            doc.user_data["cxr_char_map"] = (doc_starts or [0], text_starts or [0])
            doc.user_data["cxr_sentences"] = bounds
            yield doc

    def structure(self, reports: Sequence[ReportText]) -> list[list[Finding]]:
        sentences = [split_sentences(r.text, parse_sections(r.text)) for r in reports]
        docs = self.nlp.pipe(self._docs(reports, sentences), batch_size=self.batch_size)
        return [self._findings(report, sents, doc) for report, sents, doc in zip(reports, sentences, docs)]

    def _findings(self, report: ReportText, sentences: list[Sentence], doc) -> list[Finding]:
        if not sentences:
            return []
        char_map = doc.user_data["cxr_char_map"]
        by_position = sentences if _in_text_order(sentences) else sorted(sentences, key=lambda s: s.char_start)
        merged: dict[tuple, tuple] = {}
        mentioned: set[str] = set()
        facts: list[tuple[int, object]] = []
        for mention in doc.user_data["cxr_mentions"]:
            sentence = by_position[mention.sentence]
            if mention.report_fact is not None:
                index, kind = mention.report_fact
                holds = mention.negated if kind == "negated" else not mention.negated
                if holds and mention.certainty == _DEFINITE:
                    facts.append((index, (sentence, mention)))
                continue
            if not mention.entity:
                continue
            mentioned.add(mention.entity)
            fixed = self.vocabulary.fixed_locations.get(mention.entity)
            if fixed:
                locations = set(fixed)
            else:
                locations = set(resolve_locations(mention.locations)) if mention.locations else set()
            key = (sentence.sent_idx, mention.entity, mention.presence, mention.certainty)
            if key in merged:
                merged[key][1].update(locations)
            else:
                merged[key] = (mention, locations, sentence)
        findings = [
            self._finding(report, sentence, mention, char_map, mention.entity, mention.presence,
                          mention.certainty, tuple(sorted(locations)))
            for mention, locations, sentence in merged.values()
        ]
        for index, (sentence, mention) in facts:
            for entity in self.vocabulary.report_level[index].absent:
                if entity not in mentioned:
                    mentioned.add(entity)
                    findings.append(
                        self._finding(report, sentence, mention, char_map, entity, _ABSENT, _DEFINITE, ())
                    )
        findings.sort(key=lambda f: (f.sent_idx, f.char_start, f.entity))
        return findings

    def _finding(self, report, sentence, mention, char_map, entity, presence, certainty, locations) -> Finding:
        doc_starts, text_starts = char_map
        start = _to_text(mention.char_start, doc_starts, text_starts)
        end = _to_text(mention.char_end - 1, doc_starts, text_starts) + 1
        return Finding(
            finding_id=finding_id(report.report_id, sentence.sent_idx, start, entity),
            report_id=report.report_id,
            study_id=report.study_id,
            section=sentence.section,
            sent_idx=sentence.sent_idx,
            sentence=sentence.text,
            entity=entity,
            presence=presence,
            certainty=certainty,
            reported_locations=locations,
            mention=report.text[start:end],
            char_start=start,
            char_end=end,
            structurer=self.name,
        )
