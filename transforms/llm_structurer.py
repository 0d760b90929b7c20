"""Report structuring by a local transformers model (`structuring.backend: transformers`).

Same interface as the rule-based `RuleStructurer`: the report is cut into the same sections and
numbered sentences, a causal or sequence-to-sequence model is prompted with them and answers the
findings as a JSON list, which is validated (pydantic) against the findings schema. A report whose
answer is no valid JSON, breaks the schema or names a sentence the report does not have is
structured by the rules instead, and the reason is handed back so that the pipeline writes an
`errors` row (stage `structure`) for it. Nothing is downloaded: `model_path` is a local folder as
`save_pretrained` writes it (weights, config, tokenizer).

Output conventions are the rules' (see transforms/structuring.py): one finding per (sentence, type,
presence, certainty) with the locations united; cardiomegaly is at the heart; the mention is the
model's words where the sentence holds them (case aside), else the whole sentence.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from schemas.config import StructuringConfig, describe_validation_error
from schemas.vocab import Certainty, LesionType, Location, Presence
from transforms.records import Finding, Sentence
from transforms.sections import parse_sections
from transforms.sentences import split_sentences
from transforms.structuring import ReportText, RuleStructurer, Vocabulary, finding_id, load_vocabulary

BACKENDS = ("rules", "transformers")

DEFAULT_PROMPT = """You read chest X-ray report sentences and list every mention of these lesion types: {lesion_types}.
Answer only a JSON list with one object per mention:
{{"sent_idx": <sentence number>, "entity": <lesion type>, "presence": "present" or "absent", \
"certainty": "definite" or "uncertain", "locations": [<zero or more of: {locations}>], \
"mention": <the words of the sentence that name it>}}
Answer [] when no sentence mentions one of them.

Sentences:
{sentences}

Answer:
"""


class TransformersOptions(BaseModel):
    """`structuring.options` of the transformers backend."""

    model_config = ConfigDict(extra="forbid")

    model_path: str  # a folder written by save_pretrained: config, weights and tokenizer
    max_new_tokens: int = Field(512, ge=1)
    batch_size: int = Field(4, ge=1)
    device: str = "auto"  # 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ...
    # {lesion_types}, {locations} and {sentences} ("<sent_idx>: <sentence>" lines) are filled in
    prompt: str = DEFAULT_PROMPT


class ModelFinding(BaseModel):
    """One finding as the model must answer it."""

    model_config = ConfigDict(extra="forbid")

    sent_idx: int = Field(ge=0)
    entity: LesionType
    presence: Presence
    certainty: Certainty
    locations: list[Location] = Field(default_factory=list)
    mention: str = ""


_ANSWER = TypeAdapter(list[ModelFinding])
_JSON_LIST = re.compile(r"\[.*\]", re.S)


class InvalidAnswer(ValueError):
    """The model's answer for a report is not a valid findings list."""


def parse_answer(answer: str, n_sentences: int) -> list[ModelFinding]:
    """The findings of a model's answer: the outermost JSON list in it, validated."""
    match = _JSON_LIST.search(answer)
    if match is None:
        raise InvalidAnswer(f"no JSON list in the model's answer: {answer[:200]!r}")
    try:
        findings = _ANSWER.validate_python(json.loads(match.group()))
    except (json.JSONDecodeError, ValidationError) as exc:
        problem = " ".join(str(exc).split())[:300]
        raise InvalidAnswer(f"the model's answer is no valid findings list: {problem}") from None
    beyond = sorted({f.sent_idx for f in findings if f.sent_idx >= n_sentences})
    if beyond:
        raise InvalidAnswer(f"the model's answer names sentence(s) {beyond} of a report with {n_sentences}")
    return findings


class TransformersStructurer:
    """Reports -> findings with a local transformers model; the rules structure what it gets wrong."""

    name = "transformers"

    def __init__(self, rules: RuleStructurer, options: TransformersOptions):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        path = Path(options.model_path).expanduser()  # `check_structuring` found its config.json
        self.rules = rules
        self.options = options
        self.fixed_locations = rules.vocabulary.fixed_locations
        device = options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.encoder_decoder = bool(AutoConfig.from_pretrained(path).is_encoder_decoder)
        model_class = AutoModelForSeq2SeqLM if self.encoder_decoder else AutoModelForCausalLM
        self.model = model_class.from_pretrained(path).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"  # a causal model continues right after each prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def structure(self, reports: Sequence[ReportText]) -> list[list[Finding]]:
        return self.structure_with_fallbacks(reports)[0]

    def structure_with_fallbacks(
        self, reports: Sequence[ReportText]
    ) -> tuple[list[list[Finding]], dict[int, Exception]]:
        """Findings of each report, and {index of a report the rules structured instead: why}."""
        sentences = [split_sentences(r.text, parse_sections(r.text)) for r in reports]
        results: list[list[Finding] | None] = [[] if not s else None for s in sentences]
        fallbacks: dict[int, Exception] = {}
        asked = [i for i, s in enumerate(sentences) if s]
        size = self.options.batch_size
        for batch in (asked[k : k + size] for k in range(0, len(asked), size)):
            try:
                answers = self._generate([self.prompt(sentences[i]) for i in batch])
            except (RuntimeError, ValueError) as exc:  # e.g. a prompt longer than the model's context
                fallbacks.update(dict.fromkeys(batch, exc))
                continue
            for i, answer in zip(batch, answers):
                try:
                    results[i] = self._findings(reports[i], sentences[i], parse_answer(answer, len(sentences[i])))
                except InvalidAnswer as exc:
                    fallbacks[i] = exc
        if fallbacks:
            order = sorted(fallbacks)
            for i, findings in zip(order, self.rules.structure([reports[i] for i in order])):
                results[i] = findings
        return results, fallbacks  # type: ignore[return-value]

    def prompt(self, sentences: list[Sentence]) -> str:
        return self.options.prompt.format(
            lesion_types=", ".join(t.value for t in LesionType),
            locations=", ".join(loc.value for loc in Location),
            sentences="\n".join(f"{s.sent_idx}: {' '.join(s.text.split())}" for s in sentences),
        )

    def _generate(self, prompts: list[str]) -> list[str]:
        """The model's answer to each prompt (greedy decoding, the prompt itself left out)."""
        import torch

        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, max_new_tokens=self.options.max_new_tokens, do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        if not self.encoder_decoder:
            output = output[:, inputs["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)

    def _findings(self, report: ReportText, sentences: list[Sentence], answer: list[ModelFinding]) -> list[Finding]:
        merged: dict[tuple[int, str, str, str], tuple[ModelFinding, set[str]]] = {}
        for found in answer:
            key = (found.sent_idx, found.entity.value, found.presence.value, found.certainty.value)
            locations = set(self.fixed_locations.get(found.entity.value) or (loc.value for loc in found.locations))
            if key in merged:
                merged[key][1].update(locations)
            else:
                merged[key] = (found, locations)
        findings = []
        for (sent_idx, entity, presence, certainty), (found, locations) in merged.items():
            sentence = sentences[sent_idx]
            start, end = _mention_span(sentence, found.mention)
            findings.append(Finding(
                finding_id=finding_id(report.report_id, sent_idx, start, entity), report_id=report.report_id,
                study_id=report.study_id, section=sentence.section, sent_idx=sent_idx, sentence=sentence.text,
                entity=entity, presence=presence, certainty=certainty, reported_locations=tuple(sorted(locations)),
                mention=report.text[start:end], char_start=start, char_end=end, structurer=self.name,
            ))
        findings.sort(key=lambda f: (f.sent_idx, f.char_start, f.entity))
        return findings


def _mention_span(sentence: Sentence, mention: str) -> tuple[int, int]:
    """Report offsets of the model's mention in its sentence (white space and case aside), else of
    the whole sentence."""
    words = mention.split()
    if words:
        pattern = r"\s+".join(map(re.escape, words))
        match = re.search(pattern, sentence.text, re.IGNORECASE)
        if match is not None:
            return sentence.char_start + match.start(), sentence.char_start + match.end()
    return sentence.char_start, sentence.char_end


def check_structuring(config: StructuringConfig) -> Vocabulary:
    """Refuse what `build_structurer` would refuse (backend, options, vocabulary, model folder) without loading
    spaCy or a model, so that a launcher can say it in one line before any worker starts; the vocabulary."""
    if config.backend not in BACKENDS:
        raise ValueError(f"unknown structuring backend '{config.backend}' (known: {', '.join(BACKENDS)})")
    vocabulary = load_vocabulary(config.vocabulary)
    if config.backend == "rules":
        if config.options:
            raise ValueError(f"structuring.options: the rules backend takes none, got {sorted(config.options)}")
        return vocabulary
    path = Path(_options(config.options).model_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"structuring.options.model_path: no transformers model (config.json) in {path}")
    return vocabulary


def build_structurer(config: StructuringConfig) -> RuleStructurer | TransformersStructurer:
    """The structurer `config` names (`structuring.backend`), with its options."""
    rules = RuleStructurer(check_structuring(config))
    if config.backend == "rules":
        return rules
    return TransformersStructurer(rules, _options(config.options))


def _options(options: dict[str, Any]) -> TransformersOptions:
    try:
        return TransformersOptions(**options)
    except ValidationError as exc:
        raise ValueError(f"structuring.options: {describe_validation_error(exc)}") from None
