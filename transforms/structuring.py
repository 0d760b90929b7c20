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
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import spacy
import yaml
from spacy.attrs import IDX
from spacy.language import Language
from spacy.matcher import PhraseMatcher

from configs import VOCABULARY_DIR
from schemas.vocab import LUNG_BY_SIDE, ZONES_BY_SIDE, Certainty, LesionType, Location, Presence
from transforms.records import Finding, ReportText, Sentence
from transforms.sections import Section, parse_sections, sentence_sections
from transforms.sentences import sentence_spans, split_sentences

PRE_CUES = ("negation_pre", "uncertainty_pre")
POST_CUES = ("negation_post", "uncertainty_post")
CUE_KINDS = (*PRE_CUES, *POST_CUES, "pseudo", "terminators", "negation_terminators", "alternatives")
ZONE_INDEX = {"apical": 0, "upper": 1, "mid": 2, "base": 3}
SIDES = ("right", "left")
# the sides each side word of the vocabulary names
SIDE_SETS = {"right": ("right",), "left": ("left",), "both": SIDES}
# How far (tokens) an alternative ("or", "versus") reaches for the mention on each side.
ALTERNATIVE_REACH = 6


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
    """A vocabulary by name (configs/vocabularies/<name>.yaml) or by path to a YAML file; a file with
    `extends: NAME_OR_PATH` (a path relative to that file) adds its phrases to that vocabulary."""
    return Vocabulary.from_dict(vocabulary_data(name_or_path))


def vocabulary_data(name_or_path: str, seen: tuple[Path, ...] = ()) -> dict:
    """The vocabulary's YAML as a dict, `extends` chains merged (see `extend_vocabulary`)."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = VOCABULARY_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in VOCABULARY_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no vocabulary '{name_or_path}' (a YAML path, or one of {known})")
    if path.resolve() in seen:
        raise ValueError(f"vocabulary 'extends' loops through {path}")
    with open(path, encoding="utf-8") as handle:
        data = yaml.load(handle, Loader=_VocabularyLoader) or {}
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if str(parent).endswith((".yaml", ".yml")):
        parent = str(path.parent / Path(parent).expanduser())
    return extend_vocabulary(vocabulary_data(parent, (*seen, path.resolve())), data)


def extend_vocabulary(base: dict, overlay: dict) -> dict:
    """An overlay adds to its base: mappings merge key by key, lists gain the overlay's new items, other
    values (name, scope_tokens, ...) are replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        known = merged.get(key)
        if isinstance(value, dict) and isinstance(known, dict):
            merged[key] = extend_vocabulary(known, value)
        elif isinstance(value, list) and isinstance(known, list):
            merged[key] = known + [item for item in value if item not in known]
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------- matching (component `cxr_terms`)

# Layers of matches; within a layer the longest of overlapping matches wins.
N_LAYERS = 7
LESION, SUBJECT, PREDICATE, CUE, LOCATION, REPORT, LINK = range(N_LAYERS)


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
    for side, side_phrases in vocabulary.sides.items():
        for side_phrase in side_phrases:
            add(side_phrase, LOCATION, LocationTerm(SIDE_SETS[side], None, None))
            for zone, zone_phrases in vocabulary.zones.items():
                for zone_phrase in zone_phrases:
                    add(f"{side_phrase} {zone_phrase}", LOCATION, LocationTerm(SIDE_SETS[side], zone, None))
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


class _StreamingComponent:
    """A pipeline component called once per doc."""

    def pipe(self, docs, batch_size: int = 256):
        """What `nlp.pipe` calls: one loop over the stream instead of spaCy's guarded call per doc."""
        for doc in docs:
            yield self(doc)


class TermMatcher(_StreamingComponent):
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
        layers: list[list[tuple[int, int, object]]] = [[] for _ in range(N_LAYERS)]
        payloads = self.payloads
        for key, start, end in self.matcher(doc):
            for layer, payload in payloads[key]:
                layers[layer].append((start, end, payload))
        doc.user_data["cxr_terms"] = [_longest(matches) if len(matches) > 1 else matches for matches in layers]
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


class AssertionAnnotator(_StreamingComponent):
    """Mentions with presence, certainty and locations: `doc.user_data['cxr_mentions']`, one list per
    sentence, offsets in the sentence's text.

    The sentences are `doc.user_data['cxr_sentences']` ((first token, end token, first char) each):
    the structurer packs many sentences into one doc, since making a doc costs more than reading it.
    Without them the whole doc is one sentence. Cues, locations and links never cross a sentence end.
    Work is per clause (the sentence cut at terminators), so a cue or a location phrase only ever
    reaches the mentions of its own clause.
    """

    def __init__(self, vocabulary: Vocabulary):
        self.vocabulary = vocabulary
        self.scope = vocabulary.scope_tokens

    def __call__(self, doc):
        terms = doc.user_data["cxr_terms"]
        sentences = doc.user_data.get("cxr_sentences")
        if sentences is None:
            doc.user_data["cxr_mentions"] = [self._mentions(doc, terms, 0)]
        else:
            doc.user_data["cxr_mentions"] = [
                self._mentions(doc, layers, first_char)
                for (_, _, first_char), layers in zip(sentences, _by_sentence(terms, sentences))
            ]
        return doc

    def _mentions(self, doc, terms, first_char: int) -> list[Mention]:
        """The mentions of one sentence, given its matches (token indices in the doc)."""
        lesions, subjects, predicates, cues, locations, reports, links = terms
        if not (lesions or subjects or reports):
            return []
        terminators: list[int] = []  # every clause end
        hedge_ends: list[int] = []  # the clause ends that stop hedges too
        active_cues = []
        for cue in cues:
            kind = cue[2]
            if kind == "terminators":
                terminators.append(cue[0])
                hedge_ends.append(cue[0])
            elif kind == "negation_terminators":
                terminators.append(cue[0])
            elif kind != "pseudo":
                active_cues.append(cue)

        def clause_of(token: int) -> int:
            return bisect_right(terminators, token) if terminators else 0

        mentions = [Mention(entity, start, end, start, clause_of(start)) for start, end, entity in lesions
                    if entity is not None]
        if subjects and predicates:
            mentions.extend(self._compound_mentions(subjects, predicates, lesions, clause_of))
        for start, end, fact in reports:
            mentions.append(Mention(None, start, end, start, clause_of(start), report_fact=fact))
        mentions.sort(key=lambda m: (m.start, m.end))
        clauses: dict[int, list[Mention]] = {}
        for mention in mentions:
            clauses.setdefault(mention.clause, []).append(mention)
        for start, end, kind in active_cues:
            if kind == "uncertainty_pre" and len(hedge_ends) < len(terminators):
                # "suspected hilar mass with obstructive atelectasis": a hedge reaches forward across
                # a negation-only clause end
                hedge_clause = bisect_right(hedge_ends, start)
                governed = [m for m in mentions if bisect_right(hedge_ends, m.start) == hedge_clause]
            else:
                governed = clauses.get(clause_of(start))
            if governed:
                self._apply_cue(start, end, kind, governed)
        if locations:
            self._attach_locations(doc, clauses, mentions, locations, clause_of)
            self._share_leading_locations(doc, mentions)
            if links:
                self._hand_on_locations(mentions, links)
        for mention in mentions:
            last = doc[mention.end - 1]
            mention.char_start = doc[mention.start].idx - first_char
            mention.char_end = last.idx + len(last) - first_char
        return mentions

    def _compound_mentions(self, subjects, predicates, lesions, clause_of) -> list[Mention]:
        found = []
        direct = [(s, e) for s, e, entity in lesions if entity]
        for start, end, index in subjects:
            compound = self.vocabulary.compound_lesions[index]
            after = before = None
            for predicate in predicates:
                if predicate[2][0] != index:
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
                    compound.entity, span_start, span_end, predicate[0], clause_of(span_start),
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
            elif not (start >= mention.end and start - mention.end <= scope
                      # or between a compound's subject and its predicate: "the heart is not grossly enlarged"
                      or mention.start < start and end <= mention.anchor):
                continue
            if negation:
                mention.negated = True
                mention.presence = _ABSENT
            else:
                mention.certainty = _UNCERTAIN

    def _attach_locations(self, doc, clauses, mentions, locations, clause_of) -> None:
        last_end, last_mention = -1, None
        for start, end, term in locations:
            if term is None:
                continue
            if (last_mention is not None and term.zone is None and term.fixed is None and start > last_end
                    and doc[last_end:start].text.lower() in self.vocabulary.comparatives):
                # "left greater than right": the second side goes where the first went.
                self._attach(last_mention, term, leading=last_mention.start >= end)
                last_end = end
                continue
            same = [m for m in clauses.get(clause_of(start), ()) if m.entity is not None]
            if not same or same[0].start >= end:
                # "Opacities are present in both lung bases": a location after a preposition reaches
                # back over a short verb ("is seen", "are noted") that ends the lesion's clause.
                earlier = [m for m in mentions if m.entity is not None and m.end <= start]
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
            if first.leading is None or second.locations is not None:
                continue
            between = doc[first.end : second.start].text.lower() if second.start > first.end else ""
            if second.start >= first.end and (not between or between in connectors):
                second.locations = list(first.leading)
                second.leading = list(first.leading)

    def _hand_on_locations(self, mentions: list[Mention], links) -> None:
        """Locations across interpretation links ("retrocardiac opacity may represent atelectasis or
        pneumonia", "left basilar opacity, likely atelectasis") and adjacency ("bilateral effusions
        with adjacent atelectasis"): a target lesion without a location phrase of its own takes the
        locations of the finding it is read into or borders. Works across clause terminators
        ("opacity which may represent pneumonia"), within one sentence."""
        interpretation = self.vocabulary.interpretation
        reach = interpretation.reach
        lesions = [m for m in mentions if m.entity is not None]  # other findings too: they end chains
        for start, end, kind in links:
            before = [m for m in lesions if m.end <= start and m.entity]
            after = [m for m in lesions if m.start >= end]
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


def _by_sentence(terms: list[list], sentences: list[tuple[int, int, int]]) -> list[list]:
    """A doc's matches per sentence, each sentence's per layer (no match crosses a sentence end); a
    layer without matches is the empty tuple, so that most of them cost no list."""
    ends = [end for _, end, _ in sentences]
    parts: list[list] = [[()] * N_LAYERS for _ in sentences]
    for layer, matches in enumerate(terms):
        for match in matches:
            layers = parts[bisect_right(ends, match[0])]
            if layers[layer]:
                layers[layer].append(match)
            else:
                layers[layer] = [match]
    return parts


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
_LETTERS_ONLY = bytes(c if 97 <= c <= 122 else 32 for c in range(256))  # a-z kept, any other byte a space
_blake2b = hashlib.blake2b
# Sentences read in one spaCy doc (a doc costs more to make than to read), and what stands between them.
SENTENCES_PER_DOC = 64
_SENTENCE_GAP = "\n\n"


def _in_text_order(sentences: list[Sentence]) -> bool:
    return all(a.char_start < b.char_start for a, b in zip(sentences, sentences[1:]))


def finding_id(report_id: str, sent_idx: int, char_start: int, entity: str) -> str:
    return _blake2b(f"{report_id}|{sent_idx}|{char_start}|{entity}".encode(), digest_size=8).hexdigest()


def build_pipeline(vocabulary: Vocabulary) -> Language:
    """A blank English pipeline with the two structuring components, configured by `vocabulary`."""
    nlp = spacy.blank("en")
    nlp.add_pipe("cxr_terms", config={"vocabulary": vocabulary.source})
    nlp.add_pipe("cxr_assertions", config={"vocabulary": vocabulary.source})
    return nlp


@dataclass(frozen=True)
class Triggers:
    """What a sentence must hold to yield a finding: all the words of one of the phrases that start
    findings (lesions, compound subjects, report-level phrases). A sentence without is never
    tokenized. A phrase whose first token is no word (a number, a sign) is looked for by that token
    as a substring."""

    words: dict[str, tuple[frozenset[str], ...]]  # first word -> the word sets of its phrases
    substrings: tuple[str, ...]

    @classmethod
    def of(cls, nlp: Language, vocabulary: Vocabulary) -> Triggers:
        phrases = [p for ps in vocabulary.lesions.values() for p in ps]
        phrases += [p for c in vocabulary.compound_lesions for p in c.subjects]
        phrases += [p for f in vocabulary.report_level for p in (*f.negated, *f.stated)]
        words: dict[str, set[frozenset[str]]] = {}
        substrings = set()
        for doc in nlp.tokenizer.pipe(dict.fromkeys(p.lower() for p in phrases)):
            first = doc[0].lower_
            if _ALPHA_WORD.fullmatch(first):
                needed = frozenset(t.lower_ for t in doc if _ALPHA_WORD.fullmatch(t.lower_))
                words.setdefault(first, set()).add(needed)
            else:
                substrings.add(first)
        # a phrase whose words include another's of the same first word adds nothing to the test
        return cls(
            {first: tuple(sorted((n for n in sets if not any(o < n for o in sets)), key=sorted))
             for first, sets in words.items()},
            tuple(sorted(substrings)),
        )

    def __call__(self, text: str) -> bool:
        lower = text.lower()
        # the [a-z]+ runs; for ASCII text (nearly all) by a byte table, several times faster than the regex
        if lower.isascii():
            found = lower.encode().translate(_LETTERS_ONLY).decode().split()
        else:
            found = _ALPHA_WORD.findall(lower)
        phrases = self.words
        if not phrases.keys().isdisjoint(found):
            words = set(found)
            for word in words.intersection(phrases):
                if any(needed <= words for needed in phrases[word]):
                    return True
        return any(s in lower for s in self.substrings)


class SentenceFact(NamedTuple):  # tuples: plain data that the cyclic GC stops tracking
    """What one sentence states, whatever report it is in (so it is cached by the sentence's text).

    One per (lesion type, presence, certainty) of the sentence, mentions merged and their locations
    united, the first mention's offsets kept; or one per report-level fact that holds."""

    entity: str  # a LesionType value; '' for a report-level fact
    presence: str
    certainty: str
    locations: tuple[str, ...]
    start: int  # offsets of the (first) mention in the sentence text
    end: int
    report_fact: int  # index into Vocabulary.report_level; -1 for a lesion


class SectionFacts(NamedTuple):
    """What one section text states, whatever report it is in (so it is cached by that text: reports
    repeat whole sections, "IMPRESSION: No acute cardiopulmonary process."). Sentences are numbered
    from 0 in the section, offsets are in the section text."""

    n_sentences: int
    # (sentence number, mention start, mention end, sentence, entity, presence, certainty, locations)
    lesions: tuple[tuple[int, int, int, str, str, str, str, tuple[str, ...]], ...]
    # (sentence number, mention start, mention end, sentence, index into Vocabulary.report_level)
    report_facts: tuple[tuple[int, int, int, str, int], ...]


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
    without the words of a trigger phrase (see `triggers`) are never tokenized; the others go
    through `nlp.pipe` many to a doc (`SENTENCES_PER_DOC`). Section texts are cached the same way,
    with their sentence splits.
    """

    name = "rules"

    def __init__(self, vocabulary: Vocabulary, batch_size: int = 256, cache_size: int = 200_000):
        self.vocabulary = vocabulary
        self.nlp = build_pipeline(vocabulary)
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._sentence_cache: dict[str, tuple[SentenceFact, ...]] = {}
        self._section_cache: dict[str, SectionFacts] = {}
        self._triggers = Triggers.of(self.nlp, vocabulary)

    def clear_cache(self) -> None:
        self._sentence_cache.clear()
        self._section_cache.clear()

    def triggers(self, text: str) -> bool:
        """Whether a sentence holds the words of a phrase that can start a finding (else it is skipped)."""
        return self._triggers(text)

    def candidate_sentences(self, text: str) -> list[Sentence]:
        """The report's sentences, in text order, that hold a trigger word."""
        sentences = split_sentences(text, parse_sections(text))
        if not _in_text_order(sentences):
            sentences = sorted(sentences, key=lambda s: s.char_start)
        return [s for s in sentences if self.triggers(s.text)]

    def sentence_facts(self, texts: Sequence[str]) -> list[tuple[SentenceFact, ...]]:
        """Facts of each sentence text (offsets in that text). Texts not in the cache that hold a
        trigger word go through `nlp.pipe`, white space runs collapsed."""
        cache = self._sentence_cache
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        if len(cache) + len(new) > self.cache_size:
            cache.clear()
            new = list(dict.fromkeys(texts))
        triggers = self._triggers
        parsed = [t for t in new if triggers(t)]
        cache.update(dict.fromkeys(new, ()))
        flat = [_collapsed(t) for t in parsed]
        distinct = list(dict.fromkeys(flat))
        packs = (self._packed_doc(distinct[k : k + SENTENCES_PER_DOC]) for k in range(0, len(distinct), SENTENCES_PER_DOC))
        facts = dict(zip(distinct, (self._facts_of(mentions) for doc in self.nlp.pipe(packs, batch_size=self.batch_size)
                                    for mentions in doc.user_data["cxr_mentions"])))
        for text, collapsed in zip(parsed, flat):
            sentence_facts = facts[collapsed]
            if sentence_facts and collapsed != text:
                sentence_facts = tuple(
                    f._replace(start=_uncollapsed(text, f.start), end=_uncollapsed(text, f.end - 1) + 1)
                    for f in sentence_facts
                )
            cache[text] = sentence_facts
        return [cache[t] for t in texts]

    def section_facts(self, texts: Sequence[str]) -> dict[str, SectionFacts]:
        """Facts of each section text (FINDINGS, IMPRESSION, LAST_PARAGRAPH), split into sentences;
        texts not in the cache are split here and their sentences read by `sentence_facts`."""
        cache = self._section_cache
        known: dict[str, SectionFacts] = {}
        new: list[str] = []
        for text in dict.fromkeys(texts):
            entry = cache.get(text)
            if entry is None:
                new.append(text)
            else:
                known[text] = entry
        if not new:
            return known
        spans = [sentence_spans(text, 0, len(text)) for text in new]
        facts = iter(self.sentence_facts([text[s:e] for text, text_spans in zip(new, spans) for s, e in text_spans]))
        if len(cache) + len(new) > self.cache_size:
            cache.clear()
        for text, text_spans in zip(new, spans):
            lesions, report_facts = [], []
            for number, (start, end) in enumerate(text_spans):
                sentence_facts = next(facts)
                if sentence_facts:
                    sentence = text[start:end]
                    for f in sentence_facts:
                        if f.report_fact < 0:
                            lesions.append((number, start + f.start, start + f.end, sentence, f.entity, f.presence,
                                            f.certainty, f.locations))
                        else:
                            report_facts.append((number, start + f.start, start + f.end, sentence, f.report_fact))
            known[text] = cache[text] = SectionFacts(len(text_spans), tuple(lesions), tuple(report_facts))
        return known

    def structure_with_fallbacks(
        self, reports: Sequence[ReportText]
    ) -> tuple[list[list[Finding]], dict[int, Exception]]:
        """`structure`, in the structurers' common form (the rules never fall back on anything)."""
        return self.structure(reports), {}

    def structure(self, reports: Sequence[ReportText]) -> list[list[Finding]]:
        sectioned = [[(s, r.text[s.start : s.end]) for s in sentence_sections(parse_sections(r.text))] for r in reports]
        known = self.section_facts([text for sections in sectioned for _, text in sections])
        return [
            self._findings(report, [(section, known[text]) for section, text in sections])
            for report, sections in zip(reports, sectioned)
        ]

    def _packed_doc(self, texts: list[str]):
        """One doc of many sentence texts, their spans in `cxr_sentences`. The blank line between two
        sentences is a space token of its own, which no phrase holds, so each sentence reads as alone."""
        doc = self.nlp.make_doc(_SENTENCE_GAP.join(texts))
        token_chars = doc.to_array(IDX).tolist()
        sentences, first_char = [], 0
        for text in texts:
            end_char = first_char + len(text)
            sentences.append((bisect_left(token_chars, first_char), bisect_left(token_chars, end_char), first_char))
            first_char = end_char + len(_SENTENCE_GAP)
        doc.user_data["cxr_sentences"] = sentences
        return doc

    def _facts_of(self, mentions: list[Mention]) -> tuple[SentenceFact, ...]:
        merged: dict[tuple, list] = {}
        report_facts: list[SentenceFact] = []
        for mention in mentions:
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

    def _findings(self, report: ReportText, sections: list[tuple[Section, SectionFacts]]) -> list[Finding]:
        """Findings of a report from its sections' facts. Sentences are numbered over the sections in
        the order given (FINDINGS, then IMPRESSION); report-level facts ("no acute cardiopulmonary
        process") add absent findings for the types the report mentions nowhere, from the first such
        sentence in text order."""
        numbered, first = [], 0
        for section, facts in sections:
            numbered.append((section, facts, first))
            first += facts.n_sentences
        if len(numbered) > 1:
            numbered.sort(key=lambda item: item[0].start)
        report_id, study_id, text, structurer = report.report_id, report.study_id, report.text, self.name
        keyed = _blake2b(f"{report_id}|".encode(), digest_size=8)  # finding_id's hash, report part done
        # The frozen dataclass's __init__ sets each field through object.__setattr__, which costs more
        # than all the rest of making a finding; the fields are set at once instead (test_structuring
        # checks that the result equals the one __init__ makes).
        new, set_fields = object.__new__, object.__setattr__

        # (sent_idx, char_start, entity, order, section, sentence, char_end, presence, certainty, locations):
        # sorted as they stand, the findings' order, ties in the order found
        rows = []
        mentioned: set[str] = set()
        pending = []
        for section, facts, first in numbered:
            name, base = section.name, section.start
            for number, start, end, sentence, entity, presence, certainty, locations in facts.lesions:
                mentioned.add(entity)
                rows.append((first + number, base + start, entity, len(rows), name, sentence, base + end, presence,
                             certainty, locations))
            for number, start, end, sentence, index in facts.report_facts:
                pending.append((first + number, base + start, name, sentence, base + end, index))
        for sent_idx, start, name, sentence, end, index in pending:
            for entity in self.vocabulary.report_level[index].absent:
                if entity not in mentioned:
                    mentioned.add(entity)
                    rows.append((sent_idx, start, entity, len(rows), name, sentence, end, _ABSENT, _DEFINITE, ()))
        rows.sort()
        findings = []
        for sent_idx, start, entity, _, section, sentence, end, presence, certainty, locations in rows:
            ident = keyed.copy()
            ident.update(f"{sent_idx}|{start}|{entity}".encode())
            finding = new(Finding)
            set_fields(finding, "__dict__", {
                "finding_id": ident.hexdigest(), "report_id": report_id, "study_id": study_id, "section": section,
                "sent_idx": sent_idx, "sentence": sentence, "entity": entity, "presence": presence,
                "certainty": certainty, "reported_locations": locations, "mention": text[start:end],
                "char_start": start, "char_end": end, "structurer": structurer,
            })
            findings.append(finding)
        return findings
