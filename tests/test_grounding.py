import numpy as np
import pytest

from anatomy_models.base import MaskRefiner
from pipeline.config import load_config
from schemas.vocab import DiscardReason, LesionType, Stage
from transforms.grounding import (
    cardiothoracic_ratio,
    empty_locations,
    fuse_and_verify,
    ImageToGround,
    ground_findings,
    ground_images,
    select_candidates,
)
from transforms.records import RefinedMask

from conftest import blob, make_finding, toy_prior


@pytest.fixture
def grounding_config():
    return load_config("classical").config.grounding


class EchoRefiner(MaskRefiner):
    """Returns each candidate's own component: isolates grounding logic from any refiner."""

    name = "echo"

    def __init__(self):
        self.calls = self.boxes = 0

    def refine(self, image, boxes, seeds):
        self.calls += 1
        self.boxes += len(boxes)
        return [RefinedMask(mask=seed.copy(), score=0.8) for seed in seeds]


def test_lesion_in_reported_base_is_grounded(toy_anatomy, grounding_config):
    prior = toy_prior({"consolidation": blob(150, 60, 12)})
    finding = make_finding("consolidation", ["right lung base"])
    (g,) = ground_findings([finding], toy_anatomy, prior, np.zeros((200, 200), np.uint8), EchoRefiner(), grounding_config)
    assert g.discard is None
    assert g.grounded_locations == ("right lung base",)
    assert g.mask[150, 60] and not g.mask[:, 100:].any()
    assert "left lung" in g.unreached_locations and "right lung base" not in g.unreached_locations
    assert 0 < g.scores["prior_mass"] <= 1


def test_lesion_on_the_other_side_is_outside_reported_region(toy_anatomy, grounding_config):
    prior = toy_prior({"consolidation": blob(150, 140, 12)})
    selection = select_candidates(make_finding("consolidation", ["right lung base"]), toy_anatomy, prior, grounding_config)
    assert selection.discard == DiscardReason.OUTSIDE_REPORTED_REGION
    assert selection.details["candidates"][0]["region_overlap"] == 0


def test_no_signal_and_tiny_and_weak_candidates_are_rejected_with_reasons(toy_anatomy, grounding_config):
    finding = make_finding("opacity", ["left lung base"])
    assert select_candidates(finding, toy_anatomy, toy_prior(), grounding_config).discard == DiscardReason.NO_PRIOR_SIGNAL
    tiny = toy_prior({"opacity": blob(150, 140, 1)})
    assert select_candidates(finding, toy_anatomy, tiny, grounding_config).discard == DiscardReason.BELOW_MIN_AREA
    weak = toy_prior({"opacity": blob(150, 140, 12, value=0.55)}, probability=0.05)
    assert select_candidates(finding, toy_anatomy, weak, grounding_config).discard == DiscardReason.LOW_CONFIDENCE


def test_refiner_called_once_per_image_for_all_boxes(toy_anatomy, grounding_config):
    prior = toy_prior({"opacity": blob(160, 60, 10) + blob(160, 140, 10), "consolidation": blob(80, 60, 15)})
    findings = [make_finding("opacity", ["right lung base", "left lung base"]), make_finding("consolidation")]
    refiner = EchoRefiner()
    out = ground_findings(findings, toy_anatomy, prior, np.zeros((200, 200), np.uint8), refiner, grounding_config)
    assert refiner.calls == 1 and refiner.boxes == 3
    assert out[0].grounded_locations == ("right lung base", "left lung base")
    assert out[1].grounded_locations == ("right lung",)  # no stated location: the lungs it lies in


def test_types_that_do_not_refine_never_reach_the_refiner(toy_anatomy, grounding_config):
    assert not grounding_config.fusion["effusion"].refine and not grounding_config.fusion["edema"].refine
    prior = toy_prior({"effusion": blob(160, 60, 10), "edema": blob(80, 60, 15)})
    findings = [make_finding("effusion", ["right lung base"]), make_finding("edema")]
    refiner = EchoRefiner()
    out = ground_findings(findings, toy_anatomy, prior, np.zeros((200, 200), np.uint8), refiner, grounding_config)
    assert refiner.calls == 0
    assert all(g.mask is not None and g.source == prior.backend for g in out)


class SliverRefiner(MaskRefiner):
    """Returns the same few pixels for every candidate, with the given agreement score."""

    name = "sliver"

    def __init__(self, rows: slice, columns: slice, score: float):
        self.rows, self.columns, self.score = rows, columns, score

    def refine(self, image, boxes, seeds):
        out = []
        for seed in seeds:
            sliver = np.zeros_like(seed, dtype=bool)
            sliver[self.rows, self.columns] = True
            out.append(RefinedMask(mask=sliver, score=self.score))
        return out


def drifting_refiner() -> SliverRefiner:
    """A sliver far from each candidate with a low agreement score, as a refiner that lost the lesion."""
    return SliverRefiner(slice(60, 62), slice(20, 24), 0.05)


def test_refined_mask_that_left_its_candidate_falls_back_to_the_prior_component(toy_anatomy, grounding_config):
    prior = toy_prior({"opacity": blob(150, 60, 12)})
    finding = make_finding("opacity", ["right lung base"])
    image = np.zeros((200, 200), np.uint8)
    (g,) = ground_findings([finding], toy_anatomy, prior, image, drifting_refiner(), grounding_config)
    assert g.mask[150, 60] and not g.mask[60:62, 20:24].any()
    trusting = grounding_config.model_copy(deep=True)
    trusting.fusion[LesionType.OPACITY].min_refine_score = 0.0
    (g,) = ground_findings([finding], toy_anatomy, prior, image, drifting_refiner(), trusting)
    assert g.discard is not None or not g.mask[150, 60]


def test_cardiomegaly_needs_the_cardiothoracic_ratio(toy_anatomy, grounding_config):
    ratio = cardiothoracic_ratio(toy_anatomy)
    assert ratio == pytest.approx(55 / 140)
    finding = make_finding("cardiomegaly", ["heart"])
    selection = select_candidates(finding, toy_anatomy, toy_prior(), grounding_config)
    assert selection.discard == DiscardReason.NOT_VERIFIED and selection.details["cardiothoracic_ratio"] == ratio
    toy_anatomy.masks["heart"][110:165, 60:150] = True
    selection = select_candidates(finding, toy_anatomy, toy_prior(), grounding_config)
    g = fuse_and_verify(selection, [], toy_anatomy, toy_prior(), grounding_config, "none")
    assert g.discard is None and g.grounded_locations == ("heart",) and g.mask.sum() == toy_anatomy.masks["heart"].sum()


def test_an_ap_film_needs_a_larger_cardiothoracic_ratio(toy_anatomy, grounding_config):
    toy_anatomy.masks["heart"][110:165, 60:135] = True  # a ratio of 75 / 140 = 0.54
    finding = make_finding("cardiomegaly", ["heart"])
    assert select_candidates(finding, toy_anatomy, toy_prior(), grounding_config, "PA").direct_mask is not None
    ap = select_candidates(finding, toy_anatomy, toy_prior(), grounding_config, "AP")
    assert ap.discard == DiscardReason.NOT_VERIFIED and ap.details["min_cardiothoracic_ratio"] == 0.55
    assert ap.details["view"] == "AP"


def test_missing_anatomy_is_a_reason_not_a_crash(toy_anatomy, grounding_config):
    del toy_anatomy.masks["left lung base"]
    selection = select_candidates(make_finding("effusion", ["left lung base"]), toy_anatomy,
                                  toy_prior({"effusion": blob(150, 140, 10)}), grounding_config)
    assert selection.discard == DiscardReason.ANATOMY_MISSING
    assert "left lung base" in selection.details["missing_regions"]


def test_empty_locations_are_those_without_prior(toy_anatomy, grounding_config):
    prior = toy_prior({"pneumonia": blob(150, 60, 25, value=1.0)})
    empty = empty_locations(prior, toy_anatomy, grounding_config)
    assert "right lung base" not in empty["pneumonia"]
    assert {"left lung", "left lung base", "right apical zone lung"} <= set(empty["pneumonia"])
    assert "cardiomegaly" not in empty


def test_reported_fluid_hides_the_lung_behind_it_on_its_side_only(toy_anatomy, grounding_config):
    base_density = blob(160, 60, 15) + blob(160, 140, 15)  # dense bases, both sides
    prior = toy_prior({"pneumonia": base_density, "effusion": base_density})
    image = np.zeros((200, 200), np.uint8)
    pneumonia = make_finding("pneumonia", ["right lung base"])
    # the report names no fluid: the dense right base is the reported pneumonia
    (alone,) = ground_findings([pneumonia], toy_anatomy, prior, image, EchoRefiner(), grounding_config)
    assert alone.discard is None and alone.mask[160, 60]
    # right-sided fluid is reported: the density there is the fluid's, and the pneumonia has no signal left
    right_fluid = make_finding("effusion", ["right lung base"])
    hidden, _ = ground_findings([pneumonia, right_fluid], toy_anatomy, prior, image, EchoRefiner(), grounding_config)
    assert hidden.mask is None and hidden.discard is not None
    # fluid reported on the other side hides nothing on this one
    left_fluid = make_finding("effusion", ["left lung base"])
    kept, _ = ground_findings([pneumonia, left_fluid], toy_anatomy, prior, image, EchoRefiner(), grounding_config)
    assert kept.discard is None and kept.mask[160, 60]


def test_a_type_whose_prior_is_not_trusted_is_discarded_with_its_reason_and_verifies_nothing(toy_anatomy, grounding_config):
    rule = grounding_config.fusion[LesionType.PNEUMONIA]
    config = grounding_config.model_copy(update={"fusion": grounding_config.fusion | {
        LesionType.PNEUMONIA: rule.model_copy(update={"trusted": False})}})
    prior = toy_prior({"pneumonia": blob(150, 60, 12)})
    finding = make_finding("pneumonia", ["right lung base"])
    (g,) = ground_findings([finding], toy_anatomy, prior, np.zeros((200, 200), np.uint8), EchoRefiner(), config)
    assert g.mask is None and g.discard == DiscardReason.PRIOR_NOT_TRUSTED and g.stage == Stage.LESION_PRIOR
    assert g.details["lesion_prior"] == prior.backend
    assert "pneumonia" not in empty_locations(prior, toy_anatomy, config)
    # trusted, the same finding is grounded
    (trusted,) = ground_findings([finding], toy_anatomy, prior, np.zeros((200, 200), np.uint8), EchoRefiner(), grounding_config)
    assert trusted.discard is None


class WholeImageRefiner(MaskRefiner):
    """A refiner that leaks into everything (GrabCut on fluid, which has no lower edge, can do that)."""

    name = "leaky"

    def refine(self, image, boxes, seeds):
        return [RefinedMask(mask=np.ones_like(seed, dtype=bool), score=0.5) for seed in seeds]


def test_effusion_below_the_aerated_base_is_grounded_on_its_side(toy_anatomy, grounding_config):
    # Fluid fills the costophrenic recess under the aerated lung field (rows 30-170): the mask lies below it.
    prior = toy_prior({"effusion": blob(182, 150, 9)})
    (g,) = ground_findings([make_finding("effusion", ["left lung"])], toy_anatomy, prior,
                           np.zeros((200, 200), np.uint8), WholeImageRefiner(), grounding_config)
    assert g.discard is None
    assert g.grounded_locations == ("left lung",)
    # the prior's component is kept as it is (no refinement for fluid) and stays on the reported side
    assert g.mask[182, 150] and not g.mask[:, :100].any() and not g.mask[:120].any()


@pytest.mark.parametrize("base_zones", [1, 2])
def test_a_large_effusion_reaches_into_the_middle_zone_as_far_as_base_zones_allow(toy_anatomy, base_zones):
    # the toy lungs' zones: apical 30-65, upper 65-100, mid 100-135, base 135-170; the fluid climbs to row 108
    fluid = np.zeros((200, 200), np.float32)
    fluid[108:170, 112:168] = 0.9
    config = load_config("classical", [f"grounding.fusion.effusion.base_zones={base_zones}"]).config.grounding
    (g,) = ground_findings([make_finding("effusion", ["left lung base"])], toy_anatomy, toy_prior({"effusion": fluid}),
                           np.zeros((200, 200), np.uint8), EchoRefiner(), config)
    assert g.discard is None and g.grounded_locations == ("left lung base",)
    rows = np.flatnonzero(g.mask.any(axis=1))
    # one zone: the base dilated by 0.06 of the long side (12 px); two: the whole fluid
    assert rows[0] == (108 if base_zones == 2 else 135 - 12)
    assert not g.mask[:, :100].any()


def test_images_grounded_together_send_all_their_boxes_to_the_refiner_at_once(toy_anatomy, grounding_config):
    class BatchCountingRefiner(EchoRefiner):
        def refine_images(self, requests):
            self.batches = getattr(self, "batches", []) + [[len(boxes) for _, boxes, _ in requests]]
            return super().refine_images(requests)

    blank = np.zeros((200, 200), np.uint8)
    items = [ImageToGround([make_finding("consolidation", ["right lung base"])], toy_anatomy,
                           toy_prior({"consolidation": blob(150, 60, 12)}), blank),
             ImageToGround([make_finding("effusion", ["left lung"])], toy_anatomy, toy_prior({"effusion": blob(182, 150, 9)}),
                           blank),
             ImageToGround([make_finding("opacity", ["left upper zone lung"])], toy_anatomy,
                           toy_prior({"opacity": blob(80, 140, 10)}), blank)]
    refiner = BatchCountingRefiner()
    together = ground_images(items, refiner, grounding_config)
    assert refiner.batches == [[1, 0, 1]]  # one call; effusion is not refined, so its image sends no box
    for item, grounded in zip(items, together):
        (alone,) = ground_findings(item.findings, item.anatomy, item.prior, item.image, EchoRefiner(), grounding_config)
        assert grounded[0].discard is None and np.array_equal(grounded[0].mask, alone.mask)


def test_repeated_mentions_are_grounded_once_and_keep_their_own_finding(toy_anatomy, grounding_config):
    prior = toy_prior({"consolidation": blob(150, 60, 12)})
    in_findings = make_finding("consolidation", ["right lung base"], sent_idx=1)
    in_impression = make_finding("consolidation", ["right lung base"], sent_idx=7)
    refiner = EchoRefiner()
    first, second = ground_findings([in_findings, in_impression], toy_anatomy, prior, np.zeros((200, 200), np.uint8),
                                    refiner, grounding_config)
    assert refiner.boxes == 1
    assert first.finding is in_findings and second.finding is in_impression
    assert np.array_equal(first.mask, second.mask) and first.grounded_locations == second.grounded_locations


def test_image_tasks_ground_definite_findings_and_carry_suspected_ones_as_context(tmp_path):
    from pipeline.dag import ImageTasks
    from transforms.records import ImageRef, Study

    frontal = ImageRef("d1", "files/p10/p10000001/s50000001/d1.jpg", "PA")
    study = Study("50000001", "10000001", "train", None, images=(frontal,))
    definite = make_finding("pneumonia", ["right lung base"])
    suspected = make_finding("effusion", ["right lung"], certainty="uncertain")
    absent = make_finding("edema", presence="absent")
    (task,) = ImageTasks(str(tmp_path), ["PA", "AP"]).process((study, [definite, suspected, absent]))
    assert task.findings == [definite] and task.suspected == [suspected]


def test_a_mask_that_refinement_shrinks_below_the_minimum_area_is_discarded(toy_anatomy, grounding_config):
    prior = toy_prior({"consolidation": blob(150, 60, 12)})
    finding = make_finding("consolidation", ["right lung base"])
    image = np.zeros((200, 200), np.uint8)
    (kept,) = ground_findings([finding], toy_anatomy, prior, image, EchoRefiner(), grounding_config)
    assert kept.discard is None and kept.details["mask_area_fraction"] >= grounding_config.min_area_fraction
    # a confident refiner that keeps only a few pixels of the candidate
    shrinking = SliverRefiner(slice(149, 151), slice(59, 62), 0.9)
    (shrunk,) = ground_findings([finding], toy_anatomy, prior, image, shrinking, grounding_config)
    assert shrunk.mask is None and shrunk.discard == DiscardReason.BELOW_MIN_AREA and shrunk.stage == Stage.REFINE
    assert shrunk.details["mask_area_fraction"] < grounding_config.min_area_fraction
