"""The transformers structurer: real loading path with tiny random models, answer parsing, rule fallback."""
import json
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from schemas.config import StructuringConfig  # noqa: E402
from schemas.vocab import Location  # noqa: E402
from transforms.llm_structurer import (  # noqa: E402
    InvalidAnswer, TransformersStructurer, build_structurer, parse_answer,
)
from transforms.structuring import ReportText, RuleStructurer, finding_id  # noqa: E402

REPORTS = [
    ReportText("s50000001", "50000001",
               "FINDINGS:  The heart is mildly enlarged.  Small left pleural\n effusion.\n\n"
               "IMPRESSION:  Cardiomegaly and small left effusion.\n"),
    ReportText("s50000002", "50000002", "FINDINGS:  No pneumothorax.  Patchy opacity at the right base.\n"),
    ReportText("s50000003", "50000003", ""),
]


def tiny_model(folder, kind: str):
    """A randomly initialised GPT-2 or T5 with a byte-level BPE tokenizer, saved as save_pretrained does."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([r.text for r in REPORTS] + ['[{"sent_idx": 0, "entity": "effusion"}]'], vocab_size=400,
                            min_frequency=1, special_tokens=["<|endoftext|>", "<pad>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<pad>")
    torch.manual_seed(0)
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=2048, n_embd=16, n_layer=1,
                                           n_head=2, bos_token_id=tokenizer.eos_token_id, **ids))
    else:
        model = T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32,
                                                    num_layers=1, num_heads=2,
                                                    decoder_start_token_id=tokenizer.pad_token_id, **ids))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("gpt2"), "gpt2")


def config(model_dir, **options) -> StructuringConfig:
    return StructuringConfig(backend="transformers", options={
        "model_path": str(model_dir), "max_new_tokens": 8, "batch_size": 2, "device": "cpu", **options})


@pytest.fixture(scope="module")
def structurer(gpt2_dir):
    return build_structurer(config(gpt2_dir))


def answer_with(structurer, answers: dict[str, str]):
    """Replace the model's generate (the generation boundary only) by one that appends, to each prompt,
    the tokens of the answer for the report whose first sentence the prompt holds."""
    tokenizer = structurer.tokenizer

    def generate(input_ids, attention_mask=None, **kwargs):
        rows = []
        for prompt in tokenizer.batch_decode(input_ids, skip_special_tokens=True):
            answer = next(a for first, a in answers.items() if first in prompt)
            rows.append(torch.cat([input_ids[len(rows)], torch.tensor(tokenizer(answer)["input_ids"])]))
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id
        return torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=pad) for r in rows])

    structurer.model.generate = generate


def test_random_model_is_loaded_and_its_unusable_answers_fall_back_to_the_rules(structurer):
    assert isinstance(structurer, TransformersStructurer) and isinstance(structurer.model, transformers.GPT2LMHeadModel)
    findings, fallbacks = structurer.structure_with_fallbacks(REPORTS)
    rules = structurer.rules.structure(REPORTS)
    assert sorted(fallbacks) == [0, 1]  # the empty report needs no answer
    assert all(isinstance(exc, InvalidAnswer) for exc in fallbacks.values())
    assert findings == rules and findings[2] == []
    assert {f.structurer for f in findings[0] + findings[1]} == {"rules"}


def test_seq2seq_model_loads_through_the_same_path(tmp_path):
    structurer = build_structurer(config(tiny_model(tmp_path, "t5")))
    assert structurer.encoder_decoder and isinstance(structurer.model, transformers.T5ForConditionalGeneration)
    findings, fallbacks = structurer.structure_with_fallbacks(REPORTS[1:2])
    assert list(fallbacks) == [0] and findings == structurer.rules.structure(REPORTS[1:2])


def test_valid_answer_is_parsed_into_findings(gpt2_dir):
    structurer = build_structurer(config(gpt2_dir))
    answer = [
        {"sent_idx": 0, "entity": "cardiomegaly", "presence": "present", "certainty": "definite",
         "locations": [], "mention": "heart is mildly enlarged"},
        {"sent_idx": 1, "entity": "effusion", "presence": "present", "certainty": "definite",
         "locations": ["left lung"], "mention": "pleural effusion"},
        {"sent_idx": 2, "entity": "effusion", "presence": "present", "certainty": "definite",
         "locations": ["left lung base"], "mention": "small left effusion"},
        {"sent_idx": 2, "entity": "effusion", "presence": "present", "certainty": "definite",
         "locations": ["left lung"], "mention": "effusion"},
    ]
    answer_with(structurer, {"heart is mildly": "Sure: " + json.dumps(answer), "pneumothorax": "[]"})
    (first, second, third), fallbacks = structurer.structure_with_fallbacks(REPORTS)
    assert fallbacks == {} and second == [] and third == []
    text = REPORTS[0].text
    assert [(f.sent_idx, f.section, f.entity, f.reported_locations) for f in first] == [
        (0, "FINDINGS", "cardiomegaly", (Location.HEART.value,)),
        (1, "FINDINGS", "effusion", (Location.LEFT_LUNG.value,)),
        (2, "IMPRESSION", "effusion", (Location.LEFT_LUNG.value, Location.LEFT_BASE.value)),
    ]
    wrapped = first[1]  # the mention is found across the line wrap, at its offsets in the report
    assert wrapped.mention == text[wrapped.char_start : wrapped.char_end] == "pleural\n effusion"
    assert wrapped.sentence == "Small left pleural\n effusion."
    assert wrapped.finding_id == finding_id("s50000001", 1, wrapped.char_start, "effusion")
    assert {f.structurer for f in first} == {"transformers"} and all(f.presence == "present" for f in first)


def test_invalid_answer_becomes_a_fallback_for_that_report_only(gpt2_dir):
    structurer = build_structurer(config(gpt2_dir))
    valid = '[{"sent_idx": 1, "entity": "opacity", "presence": "present", "certainty": "definite", ' \
            '"locations": ["right lung base"], "mention": "patchy opacity"}]'
    answer_with(structurer, {"heart is mildly": '[{"sent_idx": 0, "entity": "heart"}]', "pneumothorax": valid})
    findings, fallbacks = structurer.structure_with_fallbacks(REPORTS)
    assert list(fallbacks) == [0] and "valid findings list" in str(fallbacks[0])
    assert findings[0] == RuleStructurer(structurer.rules.vocabulary).structure(REPORTS[:1])[0]
    assert [(f.entity, f.reported_locations, f.structurer) for f in findings[1]] == [
        ("opacity", (Location.RIGHT_BASE.value,), "transformers")]


@pytest.mark.parametrize("answer, problem", [
    ("The heart is enlarged.", "no JSON list"),
    ("[{'sent_idx': 0}]", "no valid findings list"),
    ('[{"sent_idx": 0, "entity": "pneumothorax", "presence": "present", "certainty": "definite"}]',
     "no valid findings list"),
    ('[{"sent_idx": 5, "entity": "edema", "presence": "absent", "certainty": "definite"}]', "sentence(s) [5]"),
])
def test_parse_answer_rejects_what_breaks_the_schema(answer, problem):
    with pytest.raises(InvalidAnswer, match=re.escape(problem)):
        parse_answer(answer, n_sentences=3)


def test_backend_and_options_are_checked(tmp_path):
    assert isinstance(build_structurer(StructuringConfig()), RuleStructurer)
    with pytest.raises(ValueError, match="unknown structuring backend 'gpt'"):
        build_structurer(StructuringConfig(backend="gpt"))
    with pytest.raises(ValueError, match="max_new_tokens"):
        build_structurer(config(tmp_path, max_new_tokens=0))
    with pytest.raises(FileNotFoundError, match="no transformers model"):
        build_structurer(config(tmp_path))


def test_pipeline_structure_stage_uses_the_configured_backend_and_writes_error_rows(gpt2_dir):
    from apache_beam.utils import shared

    from pipeline.dag import StructureReports
    from transforms.records import Study

    stage = StructureReports(config(gpt2_dir), shared.Shared())
    stage.setup()
    assert isinstance(stage._structurer, TransformersStructurer)
    batch = [(Study(r.study_id, "10000001", "train", f"files/p10/p10000001/{r.report_id}.txt", report_id=r.report_id),
              r.text) for r in REPORTS[:2]]
    outputs = list(stage.process(batch))
    errors = [o.value for o in outputs if getattr(o, "tag", None) == "errors"]
    assert [(e.stage, e.key, e.error_type) for e in errors] == [
        ("structure", "s50000001", "InvalidAnswer"), ("structure", "s50000002", "InvalidAnswer")]
    studies = [o for o in outputs if not hasattr(o, "tag")]
    assert [len(findings) for _, findings in studies] == [len(f) for f in RuleStructurer(
        stage._structurer.rules.vocabulary).structure(REPORTS[:2])]


def test_launcher_refuses_a_missing_model_in_one_line_before_any_worker_starts(tmp_path):
    from pipeline.config import load_config
    from pipeline.errors import UserError
    from pipeline.run import preflight_backends

    pipeline_config = load_config("classical").config.model_copy(update={"structuring": config(tmp_path)})
    with pytest.raises(UserError, match=r"^structuring: structuring.options.model_path: no transformers model"):
        preflight_backends(pipeline_config)
