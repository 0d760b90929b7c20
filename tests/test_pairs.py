import numpy as np
import pytest

from pipeline.config import load_config
from transforms.grounding import empty_locations, ground_findings
from transforms.image_results import FULL_MASK, ImageResult, encode_groundings, location_parts
from transforms.masks import decode_rle, dilate, encode_resized
from transforms.pairs import build_study_outputs
from transforms.records import ErrorRecord, ImageRef, Study

from conftest import blob, make_finding, toy_prior
from test_grounding import EchoRefiner

CONFIG = load_config("classical").config
UNIONS = [[loc.value for loc in u] for u in CONFIG.pairs.location_unions]
STUDY = Study("50000001", "10000001", "train", "files/p10/p10000001/s50000001.txt",
              (ImageRef("d1", "files/p10/p10000001/s50000001/d1.jpg", "PA"),), "s50000001")


def image_result(anatomy, prior, findings, dicom="d1"):
    groundable = [f for f in findings if f.presence == "present" and f.certainty == "definite"]
    groundings = ground_findings(groundable, anatomy, prior, np.zeros((200, 200), np.uint8), EchoRefiner(),
                                 CONFIG.grounding)
    return ImageResult("50000001", dicom, f"files/x/{dicom}.jpg", 400, 400,
                       findings=encode_groundings(groundings, anatomy, 400, 400, UNIONS),
                       empty_locations=empty_locations(prior, anatomy, CONFIG.grounding))


@pytest.fixture
def effusion_study(toy_anatomy):
    findings = [
        make_finding("effusion", ["right lung base", "left lung base"], sent_idx=0),
        make_finding("effusion", ["right lung base", "left lung base"], sent_idx=3, fid="f-dup"),
        make_finding("pneumonia", ["left lung"], certainty="uncertain", sent_idx=1),
        make_finding("pneumonia", presence="absent", sent_idx=2),
        make_finding("edema", presence="absent", sent_idx=2, fid="f-edema-absent"),
        make_finding("consolidation", ["right upper zone lung"], presence="absent", sent_idx=2, fid="f-cons-absent"),
    ]
    prior = toy_prior({"effusion": blob(160, 60, 10) + blob(160, 140, 10)})
    return findings, image_result(toy_anatomy, prior, findings)


def test_each_mask_part_is_encoded_as_if_alone(toy_anatomy):
    """Masks are shared within an image (a repeated mention, a part that keeps the whole mask): every finding
    still gets the encoding of its own mask and of its own location parts."""
    findings = [make_finding("effusion", ["right lung base", "left lung base"], sent_idx=0),
                make_finding("effusion", ["right lung base", "left lung base"], sent_idx=3, fid="f-dup"),
                make_finding("atelectasis", ["left lung base"], sent_idx=1)]
    prior = toy_prior({"effusion": blob(160, 60, 10) + blob(160, 140, 10), "atelectasis": blob(150, 140, 12)})
    groundings = ground_findings(findings, toy_anatomy, prior, np.zeros((200, 200), np.uint8), EchoRefiner(),
                                 CONFIG.grounding)
    encoded = encode_groundings(groundings, toy_anatomy, 400, 400, UNIONS)
    margin = int(round(0.02 * 200))
    checked = 0
    for grounding, result in zip(groundings, encoded):
        if grounding.mask is None:
            continue
        expected = {FULL_MASK: grounding.mask}
        for part in location_parts(grounding, UNIONS):
            region = np.zeros((200, 200), bool)
            for loc in part:
                region |= toy_anatomy.masks[loc]
            expected[part] = grounding.mask & dilate(region, margin)
        for part, mask in expected.items():
            rle, area, bbox = encode_resized(mask, 400, 400)
            assert (result.masks[part].rle, result.masks[part].area, result.masks[part].bbox) == (rle, area, bbox)
            checked += 1
    assert checked >= 4


def test_positive_pairs_with_masks_at_source_size(effusion_study):
    findings, image = effusion_study
    out = build_study_outputs(STUDY, findings, [image], [], 1, CONFIG.pairs)
    positives = [p for p in out.pairs if p["is_positive"]]
    kinds = {(p["instruction_type"], tuple(p["locations"])) for p in positives}
    assert ("global", ()) in kinds
    assert ("basic", ("right lung base",)) in kinds and ("basic", ("left lung base",)) in kinds
    assert ("basic", ("right lung base", "left lung base")) in kinds  # a configured union
    masks = {m["mask_id"]: m for m in out.masks}
    for pair in positives:
        mask = masks[pair["mask_id"]]
        decoded = decode_rle(mask["rle"], mask["height"], mask["width"])
        assert decoded.shape == (400, 400) and decoded.sum() == mask["area"] > 0
        assert pair["answer"].count("[SEG]") == 1 and pair["finding_id"] == findings[0].finding_id
    right = masks[next(p["mask_id"] for p in positives if p["locations"] == ["right lung base"])]
    assert right["bbox"][0] + right["bbox"][2] <= 200  # the right-base part stays on the image's left half


def test_every_present_finding_is_used_or_discarded(effusion_study):
    findings, image = effusion_study
    out = build_study_outputs(STUDY, findings, [image], [], 1, CONFIG.pairs)
    reasons = {(d["finding_id"], d["reason"]) for d in out.discarded}
    assert ("f-dup", "duplicate_mention") in reasons
    assert (findings[2].finding_id, "uncertain_finding") in reasons
    assert out.study_row["status"] == "used"
    assert out.study_row["n_positive_pairs"] == sum(p["is_positive"] for p in out.pairs)
    assert out.study_row["n_discarded"] == len(out.discarded) == 2


def test_negatives_never_contradict_report_or_masks(effusion_study):
    findings, image = effusion_study
    out = build_study_outputs(STUDY, findings, [image], [], 1, CONFIG.pairs)
    negatives = [p for p in out.pairs if not p["is_positive"]]
    assert len(negatives) >= sum(p["is_positive"] for p in out.pairs)
    for pair in negatives:
        assert pair["mask_id"] is None and pair["answer"].startswith("[SEG] There is no")
        assert pair["target"] != "pneumonia"  # reported uncertain: neither positive nor negative
        if pair["target"] == "effusion":
            assert not any("base" in loc for loc in pair["locations"]) and pair["locations"]
            assert pair["locations"] != ["right lung"] and pair["locations"] != ["left lung"]


def test_sampling_is_deterministic_and_seeded_by_study(effusion_study):
    findings, image = effusion_study
    first = build_study_outputs(STUDY, findings, [image], [], 1, CONFIG.pairs)
    again = build_study_outputs(STUDY, list(reversed(findings)), [image], [], 1, CONFIG.pairs)
    assert sorted(p["pair_id"] for p in first.pairs) == sorted(p["pair_id"] for p in again.pairs)
    assert {p["pair_id"]: p["instruction"] for p in first.pairs} == {p["pair_id"]: p["instruction"] for p in again.pairs}


def test_image_error_and_no_frontal_are_accounted(toy_anatomy):
    finding = make_finding("atelectasis", ["left lung base"])
    error = ErrorRecord("decode", "d1", "50000001", "files/x/d1.jpg", "ImageDecodeError", "truncated")
    broken = ImageResult("50000001", "d1", "files/x/d1.jpg", error=error)
    out = build_study_outputs(STUDY, [finding], [broken], [error], 1, CONFIG.pairs)
    assert [d["reason"] for d in out.discarded] == ["image_error"] and out.study_row["status"] == "error"
    lateral_only = build_study_outputs(STUDY, [finding], [], [], 0, CONFIG.pairs)
    assert [d["reason"] for d in lateral_only.discarded] == ["no_frontal_image"]
    assert lateral_only.study_row["status"] == "discarded"


def test_normal_study_gets_negatives_only(toy_anatomy):
    findings = [make_finding(t, presence="absent", fid=f"a-{t}") for t in ("effusion", "cardiomegaly", "pneumonia")]
    image = image_result(toy_anatomy, toy_prior(), findings)
    out = build_study_outputs(STUDY, findings, [image], [], 1, CONFIG.pairs)
    assert out.study_row["status"] == "negatives_only"
    assert out.pairs and not any(p["is_positive"] for p in out.pairs) and not out.masks
    assert {p["negative_kind"] for p in out.pairs} <= {"negative_reported_lesion", "not_reported_lesion"}
