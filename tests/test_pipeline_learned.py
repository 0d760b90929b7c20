"""The Beam pipeline with the learned backends wired in (cxas anatomy, xrv prior, SAM refiner): random weights of
the real architectures saved where the loaders look, and a test-sized SAM. This checks the wiring (each model
loaded once per worker, one SAM encoding per image, every finding accounted for), not the masks' quality."""
from __future__ import annotations

import json

import pytest

from anatomy_models.cxas import CxasAnatomy
from anatomy_models.random_weights import save_random_cxas, save_random_densenet, save_random_sam
from anatomy_models.xrv_prior import XrvLesionPrior
from pipeline.config import load_config
from pipeline.contract import check_run
from pipeline.run import run_pipeline
from pipeline.writers import read_table

from conftest import tiny_sam

N_STUDIES = 4
NO_GATE = "quality.validate_after_run=false"  # random weights: the data-quality gate is not what is tested


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from pipeline.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("learned-corpus")
    synthesize_corpus(root, N_STUDIES, seed=5)  # holds an opacity the classical prior finds, for SAM to refine
    return root


@pytest.fixture
def sam_builds(tmp_path, monkeypatch):
    """The test-sized SAM registered as model type 'vit_test'; every model it builds is counted, and the batch size
    of every pass through its image encoder."""
    from segment_anything import sam_model_registry

    builds, encodings = [], []

    def counted_build(checkpoint=None):
        builds.append(1)
        model = tiny_sam(checkpoint)
        model.image_encoder.register_forward_hook(lambda module, args, out: encodings.append(out.shape[0]))
        return model

    monkeypatch.setitem(sam_model_registry, "vit_test", counted_build)
    checkpoint = save_random_sam(tmp_path, "vit_test", tiny_sam)
    return checkpoint, builds, encodings


def _counters(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["counters"]


def test_default_config_runs_every_learned_backend_loaded_once(small_corpus, sam_builds, tmp_path, monkeypatch):
    checkpoint, sam_models, _ = sam_builds
    loads = {"cxas": 0, "xrv": 0}
    build_cxas, load_xrv = CxasAnatomy.build_model, XrvLesionPrior.load

    def counted_cxas(self, weights):
        loads["cxas"] += 1
        return build_cxas(self, weights)

    def counted_xrv(self):
        loads["xrv"] += self._model is None
        return load_xrv(self)

    monkeypatch.setattr(CxasAnatomy, "build_model", counted_cxas)
    monkeypatch.setattr(XrvLesionPrior, "load", counted_xrv)
    save_random_cxas(tmp_path)
    save_random_densenet(tmp_path)
    config = load_config("default", [f"anatomy.options.weights_dir={tmp_path}",
                                     f"lesion_prior.options.weights_dir={tmp_path}",
                                     f"refiner.options.checkpoint={checkpoint}", "refiner.options.model_type=vit_test",
                                     "vision.batch_size=2", NO_GATE])
    out = tmp_path / "run"
    run_pipeline(small_corpus, out, config, overwrite=True)
    assert check_run(out) == []  # every study has its row, every present finding a positive pair or a discard
    counters = _counters(out)
    assert counters["studies_read"] == N_STUDIES and counters["images_grounded"] >= N_STUDIES
    assert loads == {"cxas": 1, "xrv": 1}  # once for the whole in-process run, not per batch of 2 images
    assert len(sam_models) <= 1  # loaded once, when the first image reaches the refiner (or never)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_name"] == "default"


def test_sam_refines_classical_candidates_inside_the_pipeline_encoding_each_image_once(small_corpus, sam_builds,
                                                                                       tmp_path):
    checkpoint, sam_models, encodings = sam_builds
    config = load_config("default", ["anatomy.backend=classical", "anatomy.options={}",
                                     "lesion_prior.backend=classical", "lesion_prior.options={}",
                                     f"refiner.options.checkpoint={checkpoint}", "refiner.options.model_type=vit_test",
                                     "refiner.options.encode_batch=4", NO_GATE])
    out = tmp_path / "run"
    run_pipeline(small_corpus, out, config, overwrite=True)
    assert check_run(out) == []
    sources = {mask["source"] for mask in read_table(str(out), "masks").to_pylist()}
    assert "classical+sam" in sources
    assert len(sam_models) == 1
    # images of one DAG batch with kept candidates are encoded together (at most encode_batch a pass), each once
    assert 1 <= sum(encodings) <= _counters(out)["images_grounded"] and max(encodings) <= 4
