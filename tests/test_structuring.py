"""The rule structurer on the constructions of issue 3, with real-looking report sentences."""
from dataclasses import replace

import pytest

from schemas.vocab import LesionType, Location
from transforms.structuring import ReportText, RuleStructurer, Vocabulary, finding_id, load_vocabulary

LEFT_BASE, RIGHT_BASE = Location.LEFT_BASE.value, Location.RIGHT_BASE.value


@pytest.fixture(scope="module")
def structurer():
    return RuleStructurer(load_vocabulary("en_cxr"))


def structure(structurer, text, report_id="s50000001"):
    return structurer.structure([ReportText(report_id, report_id[1:], text)])[0]


def facts(structurer, sentence):
    """{entity: (presence, certainty, locations)} of a one-sentence FINDINGS section."""
    found = structure(structurer, f"FINDINGS:  {sentence}\n")
    return {f.entity: (f.presence, f.certainty, f.reported_locations) for f in found}


def test_vocabulary_loads_by_name_and_by_path():
    vocabulary = load_vocabulary("en_cxr")
    assert isinstance(vocabulary, Vocabulary)
    assert set(vocabulary.lesions) == {t.value for t in LesionType}
    from configs import VOCABULARY_DIR

    assert load_vocabulary(str(VOCABULARY_DIR / "en_cxr.yaml")).lesions == vocabulary.lesions
    with pytest.raises(FileNotFoundError):
        load_vocabulary("no_such_vocabulary")


def test_vocabulary_rejects_unknown_locations():
    with pytest.raises(ValueError, match="unknown location"):
        Vocabulary.from_dict({"locations": {"phrases": {"retrocardiac": ["left lower lobe"]}}})


@pytest.mark.parametrize(
    "sentence, expected",
    [
        ("No pleural effusion or pneumothorax.", {"effusion": ("absent", "definite", ())}),
        ("There is no focal consolidation, pleural effusion, or pulmonary edema.",
         {"consolidation": ("absent", "definite", ()), "effusion": ("absent", "definite", ()),
          "edema": ("absent", "definite", ())}),
        ("Heart size is normal without evidence of consolidation.",
         {"cardiomegaly": ("absent", "definite", (Location.HEART.value,)),
          "consolidation": ("absent", "definite", ())}),
        ("Pleural effusions are not seen.", {"effusion": ("absent", "definite", ())}),
        ("There is a small left effusion, but no pneumothorax or consolidation.",
         {"effusion": ("present", "definite", (Location.LEFT_LUNG.value,)),
          "consolidation": ("absent", "definite", ())}),
    ],
)
def test_negation_scope(structurer, sentence, expected):
    assert facts(structurer, sentence) == expected


def test_negation_stops_at_sentence_end(structurer):
    found = structure(structurer, "FINDINGS:  No pneumothorax. Small right pleural effusion.\n")
    assert [(f.entity, f.presence) for f in found] == [("effusion", "present")]


@pytest.mark.parametrize(
    "sentence, entity",
    [
        ("Patchy retrocardiac opacity may represent atelectasis.", "atelectasis"),
        ("Pneumonia cannot be excluded.", "pneumonia"),
        ("Possible small right pleural effusion.", "effusion"),
        ("Findings could reflect mild interstitial edema.", "edema"),
    ],
)
def test_uncertainty_cues(structurer, sentence, entity):
    presence, certainty, _ = facts(structurer, sentence)[entity]
    assert (presence, certainty) == ("present", "uncertain")


def test_hedge_does_not_reach_the_finding_it_describes(structurer):
    found = facts(structurer, "Patchy retrocardiac opacity may represent atelectasis.")
    assert found["opacity"] == ("present", "definite", (LEFT_BASE,))


def test_x_versus_y_is_uncertain_for_both_lesions(structurer):
    found = facts(structurer, "Bibasilar opacities, atelectasis versus pneumonia.")
    assert found["atelectasis"][:2] == ("present", "uncertain")
    assert found["pneumonia"][:2] == ("present", "uncertain")
    assert found["opacity"] == ("present", "definite", (LEFT_BASE, RIGHT_BASE))


def test_likely_reports_the_finding(structurer):
    assert facts(structurer, "Left basilar opacity, likely atelectasis.")["atelectasis"][:2] == ("present", "definite")


@pytest.mark.parametrize(
    "sentence, entity",
    [
        ("The previously seen right pleural effusion has resolved.", "effusion"),
        ("The left lower lobe consolidation has cleared.", "consolidation"),
        ("Right upper lobe pneumonia is no longer seen.", "pneumonia"),
        ("Interval resolution of pulmonary edema.", "edema"),
    ],
)
def test_resolution_is_absent(structurer, sentence, entity):
    assert facts(structurer, sentence)[entity][0] == "absent"


@pytest.mark.parametrize(
    "sentence",
    [
        "Unchanged small left pleural effusion.",
        "No change in the small left pleural effusion.",
        "Small left pleural effusion is again seen, not significantly changed.",
        "Partially resolved left pleural effusion.",
    ],
)
def test_comparisons_keep_the_finding_present(structurer, sentence):
    assert facts(structurer, sentence)["effusion"] == ("present", "definite", (Location.LEFT_LUNG.value,))


@pytest.mark.parametrize(
    "sentence, entity, locations",
    [
        ("Bilateral lower lobe opacities.", "opacity", (LEFT_BASE, RIGHT_BASE)),
        ("Right greater than left pleural effusions.", "effusion",
         (Location.LEFT_LUNG.value, Location.RIGHT_LUNG.value)),
        ("Left greater than right basilar atelectasis.", "atelectasis", (LEFT_BASE, RIGHT_BASE)),
        ("Mild bibasilar atelectasis.", "atelectasis", (LEFT_BASE, RIGHT_BASE)),
        ("Retrocardiac opacity.", "opacity", (LEFT_BASE,)),
        ("Patchy opacity in the lingula.", "opacity", (Location.LEFT_MID.value,)),
        ("Perihilar opacities.", "opacity", (Location.LEFT_MID.value, Location.RIGHT_MID.value)),
        ("Small effusion in the right costophrenic angle.", "effusion", (RIGHT_BASE,)),
        ("Patchy airspace disease in the right lower lobe.", "opacity", (RIGHT_BASE,)),
        ("Consolidation in the right upper and middle lobes.", "consolidation",
         (Location.RIGHT_MID.value, Location.RIGHT_UPPER.value)),
        ("The cardiac silhouette is enlarged.", "cardiomegaly", (Location.HEART.value,)),
        ("Mild pulmonary edema.", "edema", ()),
    ],
)
def test_locations(structurer, sentence, entity, locations):
    assert facts(structurer, sentence)[entity][2] == locations


def test_locations_attach_to_the_lesion_they_modify(structurer):
    found = facts(structurer, "Opacity at the right base and left lower lobe atelectasis.")
    assert found["opacity"][2] == (RIGHT_BASE,)
    assert found["atelectasis"][2] == (LEFT_BASE,)


@pytest.mark.parametrize(
    "sentence, expected",
    [
        ("Enlarged cardiac silhouette.", ("present", "definite")),
        ("The heart is mildly enlarged.", ("present", "definite")),
        ("Moderate cardiomegaly.", ("present", "definite")),
        ("Heart size is normal.", ("absent", "definite")),
        ("The cardiomediastinal silhouette is within normal limits.", ("absent", "definite")),
        ("The heart is not enlarged.", ("absent", "definite")),
    ],
)
def test_cardiomegaly_synonyms(structurer, sentence, expected):
    assert facts(structurer, sentence)["cardiomegaly"][:2] == expected


def test_vascular_congestion_is_not_edema(structurer):
    assert "edema" not in facts(structurer, "Mild pulmonary vascular congestion.")
    assert facts(structurer, "Pulmonary vascular congestion without frank edema.")["edema"][0] == "absent"


@pytest.mark.parametrize(
    "sentence, entity",
    [
        ("Small amount of pleural fluid on the right.", "effusion"),
        ("Patchy airspace disease at the left base.", "opacity"),
        ("Right lower lobe infiltrate.", "opacity"),
    ],
)
def test_lesion_synonyms(structurer, sentence, entity):
    assert facts(structurer, sentence)[entity][0] == "present"


def test_normal_report_phrase_gives_absent_findings_for_all_types(structurer):
    found = structure(structurer, "FINDINGS:  Lungs are clear.\n\nIMPRESSION:  No acute cardiopulmonary process.\n")
    assert {f.entity for f in found} == {t.value for t in LesionType}
    assert all(f.presence == "absent" and f.certainty == "definite" and f.reported_locations == () for f in found)


def test_explicit_mention_wins_over_report_level_fact(structurer):
    found = structure(structurer, "IMPRESSION:  Stable cardiomegaly.  No acute cardiopulmonary process.\n")
    by_entity = {f.entity: f for f in found}
    assert by_entity["cardiomegaly"].presence == "present"
    assert {e for e, f in by_entity.items() if f.presence == "absent"} == {t.value for t in LesionType} - {"cardiomegaly"}
    assert by_entity["edema"].mention == "acute cardiopulmonary process"


def test_uncertain_normal_phrase_is_no_fact(structurer):
    assert structure(structurer, "IMPRESSION:  Acute cardiopulmonary process cannot be excluded.\n") == []


def test_finding_fields_offsets_and_ids(structurer):
    text = (
        "                                 FINAL REPORT\n"
        " INDICATION:  ___ with pneumonia\n \n"
        " FINDINGS: \n \n Heart size is normal.  Small left pleural\n effusion.\n \n"
        " IMPRESSION: \n \n Small left pleural effusion.\n"
    )
    found = structure(structurer, text, report_id="s50414267")
    assert [(f.section, f.sent_idx, f.entity) for f in found] == [
        ("FINDINGS", 0, "cardiomegaly"), ("FINDINGS", 1, "effusion"), ("IMPRESSION", 2, "effusion")
    ]
    wrapped = found[1]
    assert text[wrapped.char_start : wrapped.char_end] == wrapped.mention == "pleural\n effusion"
    assert wrapped.sentence == "Small left pleural\n effusion."
    assert wrapped.report_id == "s50414267" and wrapped.study_id == "50414267"
    assert wrapped.structurer == "rules" and structurer.name == "rules"
    assert wrapped.finding_id == finding_id("s50414267", 1, wrapped.char_start, "effusion")
    assert structure(structurer, text, report_id="s50414267") == found
    assert all(f.entity != "pneumonia" for f in found)  # the indication is not read


def test_mentions_of_one_type_in_a_sentence_are_merged(structurer):
    found = structure(structurer, "FINDINGS:  Small left effusion and trace right effusion.\n")
    assert len(found) == 1
    assert found[0].reported_locations == (Location.LEFT_LUNG.value, Location.RIGHT_LUNG.value)


def test_batches_keep_report_order(structurer):
    reports = [ReportText(f"CXR{i}", f"CXR{i}", t) for i, t in enumerate(
        ["FINDINGS: Cardiomegaly.", "", "FINDINGS: No effusion.", "IMPRESSION: Right lower lobe pneumonia."]
    )]
    results = structurer.structure(reports)
    assert [[f.entity for f in r] for r in results] == [["cardiomegaly"], [], ["effusion"], ["pneumonia"]]
    assert all(f.report_id == r.report_id for r, fs in zip(reports, results) for f in fs)


RIGHT_LUNG, LEFT_LUNG = Location.RIGHT_LUNG.value, Location.LEFT_LUNG.value
LEFT_MID, RIGHT_MID, RIGHT_UPPER = Location.LEFT_MID.value, Location.RIGHT_MID.value, Location.RIGHT_UPPER.value
BASES = (LEFT_BASE, RIGHT_BASE)


@pytest.mark.parametrize(
    "sentence, expected",
    [
        ("Consolidation in the left lower lobe likely reflects pneumonia.",
         {"consolidation": ("present", "definite", (LEFT_BASE,)), "pneumonia": ("present", "definite", (LEFT_BASE,))}),
        ("Ill-defined left mid lung opacities likely reflect atelectasis.",
         {"opacity": ("present", "definite", (LEFT_MID,)), "atelectasis": ("present", "definite", (LEFT_MID,))}),
        ("Retrocardiac opacity may represent atelectasis or pneumonia.",
         {"opacity": ("present", "definite", (LEFT_BASE,)), "atelectasis": ("present", "uncertain", (LEFT_BASE,)),
          "pneumonia": ("present", "uncertain", (LEFT_BASE,))}),
        ("There is left basilar opacity, likely atelectasis.",
         {"opacity": ("present", "definite", (LEFT_BASE,)), "atelectasis": ("present", "definite", (LEFT_BASE,))}),
        ("Right lower lobe opacity which may represent pneumonia.",
         {"opacity": ("present", "definite", (RIGHT_BASE,)), "pneumonia": ("present", "uncertain", (RIGHT_BASE,))}),
        ("Mild streaky opacities in the left base, atelectasis versus infiltrate.",
         {"atelectasis": ("present", "uncertain", (LEFT_BASE,))}),
        ("Bibasilar opacities, left greater than right, likely atelectasis.",
         {"opacity": ("present", "definite", BASES), "atelectasis": ("present", "definite", BASES)}),
        ("No focal consolidation to suggest pneumonia.",
         {"consolidation": ("absent", "definite", ()), "pneumonia": ("absent", "uncertain", ())}),
    ],
)
def test_interpreted_lesion_takes_the_opacity_locations(structurer, sentence, expected):
    found = facts(structurer, sentence)
    assert {k: found[k] for k in expected} == expected


@pytest.mark.parametrize(
    "sentence, entity, locations",
    [
        ("Patchy opacities at both lung bases.", "opacity", BASES),
        ("Opacities are present in both lung bases.", "opacity", BASES),
        ("Patchy opacities in the right upper and middle lobes.", "opacity", (RIGHT_MID, RIGHT_UPPER)),
        ("Right middle and lower lobe patchy opacities.", "opacity", (RIGHT_BASE, RIGHT_MID)),
        ("Patchy opacity at the left base.", "opacity", (LEFT_BASE,)),
        ("There are bilateral effusions, right greater than left.", "effusion", (LEFT_LUNG, RIGHT_LUNG)),
        ("Small bilateral pleural effusions with adjacent atelectasis.", "atelectasis", BASES),
        ("Right pleural effusion with adjacent atelectasis.", "atelectasis", (RIGHT_BASE,)),
        ("Minimal basilar atelectasis on the left.", "atelectasis", (LEFT_BASE,)),
        ("Left retrocardiac airspace disease.", "opacity", (LEFT_BASE,)),
        ("Right and left lower lobe opacities.", "opacity", BASES),
        ("Left lung base atelectasis/airspace disease.", "opacity", (LEFT_BASE,)),
        ("Persistent bibasilar atelectatic opacities.", "opacity", BASES),
    ],
)
def test_locations_after_before_and_shared(structurer, sentence, entity, locations):
    assert facts(structurer, sentence)[entity][2] == locations


def test_a_lesion_with_its_own_location_keeps_it(structurer):
    found = facts(structurer, "Right basilar opacity may represent pneumonia; left upper lobe atelectasis.")
    assert found["pneumonia"][2] == (RIGHT_BASE,)
    assert found["atelectasis"][2] == (Location.LEFT_UPPER.value,)


def test_sentences_without_trigger_words_are_not_tokenized(structurer):
    assert not structurer.triggers("Osseous structures are intact.")
    assert structurer.triggers("Heart size is normal.") and structurer.triggers("No acute process.")


def test_sentences_need_the_words_of_a_whole_trigger_phrase(structurer):
    # "pulmonary" starts "pulmonary edema" and "lungs" starts "lungs are clear": neither phrase is here
    assert not structurer.triggers("Pulmonary vasculature is normal.")
    assert not structurer.triggers("The lungs are hyperinflated.")
    assert structurer.triggers("Lungs are clear.")


@pytest.mark.parametrize(
    "sentence, expected",
    [
        # a negation between a compound's subject and its predicate
        ("The heart is not grossly enlarged.", {"cardiomegaly": ("absent", "definite", (Location.HEART.value,))}),
        ("Heart size is upper limits normal.", {"cardiomegaly": ("present", "uncertain", (Location.HEART.value,))}),
        # hedges: differentials, requests for correlation, the clinical setting, "also possible", "maybe"
        ("Considerations would include pericardial effusion or dilated cardiomyopathy.",
         {"effusion": ("present", "uncertain", (Location.HEART.value,))}),
        ("Please correlate clinically for pneumonia.", {"pneumonia": ("present", "uncertain", ())}),
        ("In the appropriate clinical setting this appearance is compatible with pneumonia.",
         {"pneumonia": ("present", "uncertain", ())}),
        ("Aspiration or edema are also possible.", {"edema": ("present", "uncertain", ())}),
        ("Maybe due to scarring and/or atelectasis.", {"atelectasis": ("present", "uncertain", ())}),
        ("Findings are strongly suggestive of pneumonia.", {"pneumonia": ("present", "definite", ())}),
        # "without significant interval change" compares; it negates nothing
        ("There is redemonstration without significant interval change of mild subsegmental atelectasis of the "
         "left base.", {"atelectasis": ("present", "definite", (LEFT_BASE,))}),
    ],
)
def test_more_assertion_cues(structurer, sentence, expected):
    found = facts(structurer, sentence)
    assert {k: found[k] for k in expected} == expected


def test_a_hedge_reaches_across_with_and_a_negation_does_not(structurer):
    assert facts(structurer, "Suspected left hilar mass with obstructive atelectasis.")["atelectasis"][:2] == (
        "present", "uncertain")
    found = facts(structurer, "No cardiomegaly with bilateral pleural effusions.")
    assert found["cardiomegaly"][0] == "absent"
    assert found["effusion"] == ("present", "definite", (LEFT_LUNG, RIGHT_LUNG))
    # a size after "with" starts a finding of its own, which the hedge before does not reach
    found = facts(structurer, "Possible right lower lobe pneumonia with small right effusion.")
    assert found["pneumonia"][1] == "uncertain" and found["effusion"][:2] == ("present", "definite")


def test_findings_are_complete_records(structurer):
    found = structure(structurer, "FINDINGS:  Small left effusion.  Heart size is normal.\n\n"
                                  "IMPRESSION:  No acute cardiopulmonary process.\n")
    # each equals the Finding its dataclass __init__ makes from the same fields (no field missing)
    assert found == [replace(f) for f in found] and len(found) == 7


def test_sentences_read_many_to_a_doc_read_as_if_alone(structurer):
    texts = ["No pleural effusion or pneumothorax.", "Retrocardiac opacity may represent atelectasis.",
             "Osseous structures are intact.", "Heart size is normal.", "Small left pleural\n effusion.",
             "Right greater than left pleural effusions."]
    structurer.clear_cache()
    packed = structurer.sentence_facts(texts)
    alone = []
    for text in texts:
        structurer.clear_cache()
        alone += structurer.sentence_facts([text])
    assert packed == alone and all(packed[i] for i in (0, 1, 3, 4, 5)) and packed[2] == ()
    # a doc made without sentence spans is one sentence
    assert [m.entity for m in structurer.nlp("Small left effusion.").user_data["cxr_mentions"][0]] == ["effusion"]
