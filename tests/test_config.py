import pytest

from pipeline.config import load_config
from pipeline.errors import UserError


def test_shipped_configs_load_and_differ_only_in_models():
    classical, default = load_config("classical"), load_config("default")
    assert classical.config.anatomy.backend == "classical" and default.config.refiner.backend == "sam"
    assert classical.config.pairs == default.config.pairs
    assert classical.config_hash != default.config_hash


def test_user_config_extends_and_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: classical\nname: mine\ngrounding:\n  min_confidence: 0.45\n")
    loaded = load_config(str(path), ["pairs.seed=7", "vision.work_size=256"])
    cfg = loaded.config
    assert (cfg.name, cfg.grounding.min_confidence, cfg.pairs.seed, cfg.vision.work_size) == ("mine", 0.45, 7, 256)
    assert cfg.grounding.min_prior_mass == load_config("classical").config.grounding.min_prior_mass
    assert loaded.config_hash != load_config("classical").config_hash


@pytest.mark.parametrize("text, overrides, message", [
    ("extends: classical\ngrounding: {min_confidence: 3}\n", [], "grounding.min_confidence"),
    ("extends: classical\ngrounding: {fusion: {effusion: {region: pleura}}}\n", [], "unknown fusion region"),
    ("extends: classical\ntypo_section: 1\n", [], "typo_section"),
    ("extends: classical\n", ["pairs.located_types=[tumour]"], "located_types"),
    ("extends: nowhere\n", [], "unknown config 'nowhere'"),
])
def test_bad_config_is_one_clear_line(tmp_path, text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_config(str(path), overrides)
    assert message in str(info.value) and "\n" not in str(info.value)
