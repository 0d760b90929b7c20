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
from dataclasses import dataclass, field, replace
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
class Interpretation:
    """A lesion read into another finding takes that finding's place (see the YAML's `interpretation`)."""

    sources: frozenset[str]  # LesionType values whose locations are handed on
    targets: frozenset[str]  # LesionType values that receive them
    links: tuple[str, ...]  # "likely reflects", "may represent", "compatible with", ...
    appositions: tuple[str, ...]  # ","; the target must follow at once
    reach: int  # tokens from the source to the link and from the link to a target
    adjacency: tuple[str, ...]  # "adjacent", "associated": the lesion after one borders the one before
    zone_by_source: dict[str, str]  # a bordering lesion's zone when the source names only sides


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
    sides_after: frozenset[str]
    shared_across: frozenset[str]
    verb_gap: int
    comparatives: frozenset[str]
    fixed_locations: dict[str, tuple[str, ...]]
    interpretation: Interpretation
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
        interp = data.get("interpretation", {})
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
            sides_after=frozenset(phrases(loc.get("sides_after", []), "locations.sides_after")),
            shared_across=frozenset(p.lower() for p in phrases(loc.get("shared_across", []), "locations.shared_across")),
            verb_gap=int(loc.get("verb_gap", 3)),
            comparatives=frozenset(p.lower() for p in phrases(loc.get("comparatives", []), "locations.comparatives")),
            fixed_locations={
                types([k], "locations.fixed")[0]: locations(v, f"locations.fixed.{k}")
                for k, v in loc.get("fixed", {}).items()
            },
            interpretation=Interpretation(
                sources=frozenset(types(interp.get("sources", []), "interpretation.sources")),
                targets=frozenset(types(interp.get("targets", []), "interpretation.targets")),
                links=phrases(interp.get("links", []), "interpretation.links"),
                appositions=phrases(interp.get("appositions", []), "interpretation.appositions"),
                reach=int(interp.get("reach", 8)),
                adjacency=phrases(interp.get("adjacency", []), "interpretation.adjacency"),
                zone_by_source={
                    types([k], "interpretation.zone_by_source")[0]: _zone(v, "interpretation.zone_by_source")
                    for k, v in interp.get("zone_by_source", {}).items()
                },
            ),
            source=data,
        )


def _zone(value, where: str) -> str:
    if value not in (*ZONE_INDEX, "lung"):
        raise ValueError(f"vocabulary: {where}: unknown zone {value!r}")
    return value


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
LESION, SUBJECT, PREDICATE, CUE, LOCATION, REPORT, LINK = range(7)


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
    interpretation = vocabulary.interpretation
    for kind, phrases in (("link", interpretation.links), ("apposition", interpretation.appositions),
                          ("adjacency", interpretation.adjacency)):
        for phrase in phrases:
            add(phrase, LINK, kind)
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
        layers: list[list[tuple[int, int, object]]] = [[] for _ in range(7)]
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
    leading: list | None = None  # those of `locations` written before the mention ("left basilar ...")
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
        lesions, subjects, predicates, cues, locations, reports, links = doc.user_data["cxr_terms"]
        if not (lesions or subjects or reports):
            doc.user_data["cxr_mentions"] = []
            return doc
        text = doc.user_data.get("cxr_text")
        if text is None:
            text = doc.user_data["cxr_text"] = doc.text
        sentence_spans = doc.user_data.get("cxr_sentences") or [(0, len(text))]
        sentence_starts = [start for start, _ in sentence_spans]
        # Token offsets in one C call: Token objects are the cost on this path.
        token_chars = doc.to_array(IDX).tolist()
        token_chars.append(len(text))

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
            self._attach_locations(doc, clauses, mentions, locations, sentence_of, clause_of)
            self._share_leading_locations(doc, mentions)
            if links:
                self._hand_on_locations(mentions, links, sentence_of)
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

    def _attach_locations(self, doc, clauses, mentions, locations, sentence_of, clause_of) -> None:
        last_end, last_mention = -1, None
        for start, end, term in locations:
            if term is None:
                continue
            sent = sentence_of(start)
            if sent < 0:
                continue
            if (last_mention is not None and term.zone is None and term.fixed is None and start > last_end
                    and last_mention.sentence == sent
                    and doc[last_end:start].text.lower() in self.vocabulary.comparatives):
                # "left greater than right": the second side goes where the first went.
                self._attach(last_mention, term, leading=last_mention.start >= end)
                last_end = end
                continue
            same = [m for m in clauses.get((sent, clause_of(sent, start)), ()) if m.entity is not None]
            if not same or same[0].start >= end:
                # "Opacities are present in both lung bases": a location after a preposition reaches
                # back over a short verb ("is seen", "are noted") that ends the lesion's clause.
                earlier = [m for m in mentions if m.sentence == sent and m.entity is not None and m.end <= start]
                preposition = self._preposition_before(doc, start, earlier[-1].end) if earlier else -1
                if preposition >= 0 and preposition - earlier[-1].end <= self.vocabulary.verb_gap:
                    self._attach(earlier[-1], term, leading=False)
                    last_end, last_mention = end, earlier[-1]
                    continue
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
                if previous is not None and (
                    self._preposition_before(doc, start, previous.end) >= 0
                    or term.zone is None and term.fixed is None and previous.end < start
                    and doc[start - 1].lower_ in self.vocabulary.sides_after
                ):
                    chosen = previous
                elif following is not None and following.start - end <= self.scope:
                    chosen = following
                else:
                    chosen = previous
            if chosen is not None:
                self._attach(chosen, term, leading=chosen.start >= end)
                last_end, last_mention = end, chosen

    @staticmethod
    def _attach(mention: Mention, term: LocationTerm, leading: bool) -> None:
        if mention.locations is None:
            mention.locations = []
        mention.locations.append(term)
        if leading:
            if mention.leading is None:
                mention.leading = []
            mention.leading.append(term)

    def _share_leading_locations(self, doc, mentions: list[Mention]) -> None:
        """Locations written before coordinated lesions reach all of them ("left lung base
        atelectasis/airspace disease", "bibasilar atelectatic opacities", "right basilar atelectasis
        or pneumonia") when the later ones name none of their own."""
        connectors = self.vocabulary.shared_across
        lesions = [m for m in mentions if m.entity is not None]
        for first, second in zip(lesions, lesions[1:]):
            if first.leading is None or second.locations is not None or first.sentence != second.sentence:
                continue
            between = doc[first.end : second.start].text.lower() if second.start > first.end else ""
            if second.start >= first.end and (not between or between in connectors):
                second.locations = list(first.leading)
                second.leading = list(first.leading)

    def _hand_on_locations(self, mentions: list[Mention], links, sentence_of) -> None:
        """Locations across interpretation links ("retrocardiac opacity may represent atelectasis or
        pneumonia", "left basilar opacity, likely atelectasis") and adjacency ("bilateral effusions
        with adjacent atelectasis"): a target lesion without a location phrase of its own takes the
        locations of the finding it is read into or borders. Works across clause terminators
        ("opacity which may represent pneumonia"), within one sentence."""
        interpretation = self.vocabulary.interpretation
        reach = interpretation.reach
        lesions = [m for m in mentions if m.entity is not None]  # other findings too: they end chains
        for start, end, kind in links:
            sent = sentence_of(start)
            before = [m for m in lesions if m.sentence == sent and m.end <= start and m.entity]
            after = [m for m in lesions if m.sentence == sent and m.start >= end]
            if not before or not after:
                continue
            if kind == "adjacency":
                target = after[0]
                if target.start - end > 2 or target.locations is not None:
                    continue
                source = next((m for m in reversed(before) if m.locations), None)
                if source is not None:
                    zone = interpretation.zone_by_source.get(source.entity)
                    target.locations = [
                        LocationTerm(t.sides, zone, None) if zone and t.fixed is None and t.zone in (None, "lung")
                        and t.sides else t
                        for t in source.locations
                    ]
                continue
            source = before[-1]
            if source.entity not in interpretation.sources or not source.locations or start - source.end > reach:
                continue
            targets_reach = 2 if kind == "apposition" else reach
            for target in after:
                if target.start - end > targets_reach or target.entity in interpretation.sources and target is not after[0]:
                    break
                if target.entity in interpretation.targets and target.locations is None:
                    target.locations = list(source.locations)
                if kind == "apposition":
                    targets_reach = reach

    def _preposition_before(self, doc, start: int, floor: int) -> int:
        """Token index of the preposition (skipping determiners) right before `start`, else -1."""
        vocabulary = self.vocabulary
        token = start - 1
        while token >= floor and doc[token].lower_ in vocabulary.determiners:
            token -= 1
        if token < floor:
            return -1
        word = doc[token].lower_
        if word in vocabulary.prepositions:
            return token
        if token - 1 >= floor and f"{doc[token - 1].lower_} {word}" in vocabulary.prepositions:
            return token - 1
        return -1


@Language.factory("cxr_assertions", default_config={"vocabulary": {}})
def make_assertion_annotator(nlp: Language, name: str, vocabulary: dict) -> AssertionAnnotator:
    return AssertionAnnotator(Vocabulary.from_dict(vocabulary))


def resolve_locations(terms: list[LocationTerm]) -> tuple[str, ...]:
    """CXAS locations of one mention's location phrases, in text order, sides and zones distributed."""
    result: set[str] = set()
    placed = any(t.fixed or t.zone not in (None, "lung") for t in terms)
    for i, term in enumerate(terms):
        if term.fixed:
            result.update(term.fixed)
            continue
        sides, zone = term.sides, term.zone
        if zone is None:
            # "right and left lower lobes", "left greater than right basilar": the zone that follows.
            zoned = [t.zone for t in terms[i + 1 :] if t.zone]
            if not zoned and placed:
                # "basilar atelectasis on the left", "left retrocardiac opacity": the side word
                # only says which side the zone or place is on.
                continue
            zone = zoned[0] if zoned else "lung"
        if sides is None:
            sided = [t.sides for t in terms[:i][::-1] + terms[i + 1 :] if t.sides]
            if not sided and zone == "lung":
                result.add(Location.LUNG.value)
                continue
            sides = sided[0] if sided else SIDES
        for side in sides:
            if zone == "lung":
                result.add(LUNG_BY_SIDE[side].value)
            else:
                result.add(ZONES_BY_SIDE[side][ZONE_INDEX[zone]].value)
    return tuple(sorted(result))


# ------------------------------------------------------------------------------- the structurer


_LOOSE_SPACE = re.compile(r"[^\S ]|  ")
_WORD_RUN = re.compile(r"\S+")
_ALPHA_WORD = re.compile(r"[a-z]+")


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


def _trigger_words(nlp: Language, vocabulary: Vocabulary) -> tuple[frozenset[str], tuple[str, ...]]:
    """First tokens (lower case) of every phrase that can start a finding: lesions, compound
    subjects and report-level phrases. A sentence with none of them yields nothing, so it is never
    tokenized. Alphabetic first tokens are looked up as words; any other is searched as a substring."""
    phrases = [p for ps in vocabulary.lesions.values() for p in ps]
    phrases += [p for c in vocabulary.compound_lesions for p in c.subjects]
    phrases += [p for f in vocabulary.report_level for p in (*f.negated, *f.stated)]
    words, others = set(), set()
    for doc in nlp.tokenizer.pipe(dict.fromkeys(p.lower() for p in phrases)):
        first = doc[0].lower_
        (words if _ALPHA_WORD.fullmatch(first) else others).add(first)
    return frozenset(words), tuple(sorted(others))


@dataclass(frozen=True, slots=True)
class SentenceFact:
    """What one sentence states, whatever report it is in (so it is cached by the sentence's text).

    One per (lesion type, presence, certainty) of the sentence, mentions merged and their locations
    united, the first mention's offsets kept; or one per report-level fact that holds."""

    entity: str  # a LesionType value; '' for a report-level fact
    presence: str
    certainty: str
    locations: tuple[str, ...]
    start: int  # offsets of the (first) mention in the sentence text (white space runs collapsed)
    end: int
    report_fact: int  # index into Vocabulary.report_level; -1 for a lesion


def _collapsed(text: str) -> str:
    """The sentence with every white space run as one space: phrases match across line wraps."""
    return text if _LOOSE_SPACE.search(text) is None else " ".join(text.split())


def _uncollapsed(text: str, offset: int) -> int:
    """Offset in `text` of the char at `offset` of _collapsed(text), for a text with loose space."""
    cursor = 0
    for word in _WORD_RUN.finditer(text):
        if offset <= cursor + len(word.group()):
            return word.start() + offset - cursor
        cursor += len(word.group()) + 1
    return len(text)


class RuleStructurer:
    """Reports -> findings with spaCy rules; no weights.

    Sentences are independent (cues, locations and links never cross a sentence end), so each
    distinct sentence text runs through the spaCy pipeline once and its facts are cached: report
    corpora repeat their sentences ("No pneumothorax.", "The lungs are clear.") many times. Sentences
    without a trigger word (see `triggers`) are never tokenized.
    """

    name = "rules"

    def __init__(self, vocabulary: Vocabulary, batch_size: int = 256, cache_size: int = 200_000):
        self.vocabulary = vocabulary
        self.nlp = build_pipeline(vocabulary)
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: dict[str, tuple[SentenceFact, ...]] = {}
        self._trigger_set, self._trigger_substrings = _trigger_words(self.nlp, vocabulary)

    def clear_cache(self) -> None:
        self._cache.clear()

    def triggers(self, text: str) -> bool:
        """Whether a sentence holds a word that can start a finding (else it is skipped)."""
        lower = text.lower()
        return not self._trigger_set.isdisjoint(_ALPHA_WORD.findall(lower)) or any(
            s in lower for s in self._trigger_substrings
        )

    def candidate_sentences(self, text: str) -> list[Sentence]:
        """The report's sentences, in text order, that hold a trigger word."""
        sentences = split_sentences(text, parse_sections(text))
        if not _in_text_order(sentences):
            sentences = sorted(sentences, key=lambda s: s.char_start)
        return [s for s in sentences if self.triggers(s.text)]

    def sentence_facts(self, texts: Sequence[str]) -> list[tuple[SentenceFact, ...]]:
        """Facts of each collapsed sentence text; texts not in the cache go through `nlp.pipe`."""
        cache = self._cache
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        if len(cache) + len(new) > self.cache_size:
            cache.clear()
            new = list(dict.fromkeys(texts))
        for text, doc in zip(new, self.nlp.pipe(new, batch_size=self.batch_size)):
            cache[text] = self._facts_of(doc)
        return [cache[t] for t in texts]

    def structure(self, reports: Sequence[ReportText]) -> list[list[Finding]]:
        sentences = [self.candidate_sentences(r.text) for r in reports]
        texts = [_collapsed(s.text) for sents in sentences for s in sents]
        facts = iter(self.sentence_facts(texts))
        return [
            self._findings(report, sents, [next(facts) for _ in sents]) for report, sents in zip(reports, sentences)
        ]

    def _facts_of(self, doc) -> tuple[SentenceFact, ...]:
        merged: dict[tuple, list] = {}
        report_facts: list[SentenceFact] = []
        for mention in doc.user_data["cxr_mentions"]:
            if mention.report_fact is not None:
                index, kind = mention.report_fact
                holds = mention.negated if kind == "negated" else not mention.negated
                if holds and mention.certainty == _DEFINITE:
                    report_facts.append(
                        SentenceFact("", _ABSENT, _DEFINITE, (), mention.char_start, mention.char_end, index)
                    )
                continue
            if not mention.entity:
                continue
            fixed = self.vocabulary.fixed_locations.get(mention.entity)
            if fixed:
                locations = set(fixed)
            else:
                locations = set(resolve_locations(mention.locations)) if mention.locations else set()
            key = (mention.entity, mention.presence, mention.certainty)
            if key in merged:
                merged[key][1].update(locations)
            else:
                merged[key] = [mention, locations]
        lesions = [
            SentenceFact(m.entity, m.presence, m.certainty, tuple(sorted(locations)), m.char_start, m.char_end, -1)
            for m, locations in merged.values()
        ]
        return (*lesions, *report_facts)

    def _findings(self, report: ReportText, sentences: list[Sentence], facts) -> list[Finding]:
        """Findings of a report from its sentences' facts. Report-level facts ("no acute
        cardiopulmonary process") add absent findings for the types the report mentions nowhere."""
        findings: list[Finding] = []
        mentioned: set[str] = set()
        pending: list[tuple[Sentence, SentenceFact]] = []
        for sentence, sentence_facts in zip(sentences, facts):
            if sentence_facts and _LOOSE_SPACE.search(sentence.text) is not None:
                sentence_facts = [replace(f, start=_uncollapsed(sentence.text, f.start),
                                          end=_uncollapsed(sentence.text, f.end - 1) + 1) for f in sentence_facts]
            for fact in sentence_facts:
                if fact.report_fact < 0:
                    mentioned.add(fact.entity)
                    findings.append(self._finding(report, sentence, fact, fact.entity, fact.presence,
                                                  fact.certainty, fact.locations))
                else:
                    pending.append((sentence, fact))
        for sentence, fact in pending:
            for entity in self.vocabulary.report_level[fact.report_fact].absent:
                if entity not in mentioned:
                    mentioned.add(entity)
                    findings.append(self._finding(report, sentence, fact, entity, _ABSENT, _DEFINITE, ()))
        findings.sort(key=lambda f: (f.sent_idx, f.char_start, f.entity))
        return findings

    def _finding(self, report, sentence, fact, entity, presence, certainty, locations) -> Finding:
        start, end = sentence.char_start + fact.start, sentence.char_start + fact.end
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
