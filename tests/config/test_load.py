"""Config composition, overrides and the messages for bad configs."""

from pathlib import Path

import pytest

from rablip.config.load import CONFIGS_DIR, load_config, to_yaml
from rablip.config.schema import Config
from rablip.errors import ConfigError
from rablip.synthetic.settings import load_settings

# configs/accelerate/ holds accelerate's launch configs, not rablip's (tests/training/test_fsdp.py and
# test_deepspeed_configs.py check those)
ALL_CONFIGS = sorted(path for path in CONFIGS_DIR.rglob("*.yaml") if path.parent.name != "accelerate")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS_DIR)))
def test_every_config_file_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert "${" not in to_yaml(cfg), "interpolations must be resolved"


def test_required_experiments_and_models_exist():
    names = {p.stem for p in (CONFIGS_DIR / "experiment").glob("*.yaml")}
    for stage in ("synthetic_pretrain", "synthetic_finetune", "synthetic_eval", "okvqa_finetune", "okvqa_eval",
                  "aokvqa_finetune", "aokvqa_eval", "webqa_finetune", "webqa_eval", "infoseek_eval",
                  # RORA-VLM's (tests/config/test_rora_configs.py checks what they set)
                  "infoseek_pretrain", "infoseek_finetune", "infoseek_instructblip_finetune",
                  "infoseek_instructblip_eval", "evqa_finetune", "evqa_eval", "oven_eval"):
        assert stage in names
    models = {p.stem for p in (CONFIGS_DIR / "model").glob("*.yaml")}
    assert {"tiny", "instructblip_flant5xl", "instructblip_flant5xxl", "instructblip_vicuna7b", "blip2_opt2.7b"} <= models


def test_published_models_point_at_their_checkpoints():
    # A checkpoint brings its sizes (there is no model.arch): each config names its published dir.
    for name, checkpoint in (("instructblip_flant5xl", "instructblip-flan-t5-xl"),
                             ("instructblip_flant5xxl", "instructblip-flan-t5-xxl"),
                             ("instructblip_t5base", "instructblip-t5-base"),
                             ("instructblip_t5large", "instructblip-t5-large"),
                             ("instructblip_vicuna7b", "instructblip-vicuna-7b"), ("blip2_opt2.7b", "blip2-opt-2.7b")):
        assert load_config(CONFIGS_DIR / "model" / f"{name}.yaml").model.checkpoint == f"checkpoints/{checkpoint}"


def test_ra_blip_generators_compute_as_released():
    # RA-BLIP's four generators run the release's one-pass multi-image Q-Former; the others keep rablip's default.
    for name in ("instructblip_flant5xl", "instructblip_flant5xxl", "instructblip_t5base", "instructblip_t5large"):
        assert load_config(CONFIGS_DIR / "model" / f"{name}.yaml").model.multi_image == "concat", name
    assert load_config(CONFIGS_DIR / "model" / "instructblip_vicuna7b.yaml").model.multi_image == "per_slot"


def test_required_keys_exist():
    cfg = load_config(None)
    for key in ("run.output_dir", "run.seed", "run.resume", "train.lr", "train.max_steps", "train.batch_size",
                "train.save_every", "retrieval.k", "askg.noise_ratio", "askg.weight"):
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key


def test_defaults_compose_in_order_and_file_overrides_its_defaults(tmp_path):
    write(tmp_path / "a.yaml", "train:\n  lr: 0.1\n  max_steps: 7\n")
    write(tmp_path / "b.yaml", "train:\n  lr: 0.2\n")
    top = write(tmp_path / "top.yaml", "defaults: [a.yaml, b.yaml]\ntrain:\n  batch_size: 3\n")
    cfg = load_config(top)
    assert (cfg.train.lr, cfg.train.max_steps, cfg.train.batch_size) == (0.2, 7, 3)
    top2 = write(tmp_path / "top2.yaml", "defaults: [a.yaml]\ntrain:\n  lr: 0.5\n")
    assert load_config(top2).train.lr == 0.5


def test_defaults_relative_to_configs_dir(tmp_path):
    top = write(tmp_path / "x.yaml", "defaults: [model/tiny]\n")
    assert load_config(top).model.fusion.dim == 64


def test_interpolation(tmp_path):
    top = write(tmp_path / "x.yaml", "run:\n  output_dir: /tmp/r\n  name: ${run.output_dir}/named\n")
    assert load_config(top).run.name == "/tmp/r/named"
    assert load_config(top, ["run.output_dir=/elsewhere"]).run.name == "/elsewhere/named"


@pytest.mark.parametrize("override, check", [
    ("train.lr=3e-4", lambda c: c.train.lr == 3e-4),
    ("train.max_steps=12", lambda c: c.train.max_steps == 12),
    ("run.resume=true", lambda c: c.run.resume is True),
    ("model.trainable=[qformer,query_tokens]", lambda c: c.model.trainable == ["qformer", "query_tokens"]),
    ("train.betas=[0.8,0.95]", lambda c: c.train.betas == [0.8, 0.95]),
    ("model.fusion.layers=4", lambda c: c.model.fusion.layers == 4),
    ("data.kb={format: wit_tsv, path: x.tsv}", lambda c: (c.data.kb.format, c.data.kb.path) == ("wit_tsv", "x.tsv")),
    ("run.name=", lambda c: c.run.name == ""),
    ("eval.lemmatize=false", lambda c: c.eval.lemmatize is False),
    ("train.mixed_precision=no", lambda c: c.train.mixed_precision == "no"),
])
def test_override_kinds(override, check):
    # data.root cleared: a relative path stays as given (it would resolve under the synthetic world)
    assert check(load_config(CONFIGS_DIR / "experiment" / "synthetic_finetune.yaml", ["data.root=", override]))


def test_later_override_wins():
    assert load_config(None, ["train.lr=1", "train.lr=2"]).train.lr == 2


def test_unknown_key_on_command_line_names_nearest():
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS_DIR / "experiment" / "synthetic_finetune.yaml", ["train.lrr=1"])
    message = str(err.value)
    assert "train.lrr" in message and "command line" in message and "did you mean 'train.lr'" in message


def test_unknown_key_in_yaml_names_file_line_and_nearest(tmp_path):
    top = write(tmp_path / "x.yaml", "train:\n  lr: 1\n  max_stpes: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(top)
    message = str(err.value)
    assert "train.max_stpes" in message and str(top) in message and "line 3" in message
    assert "did you mean 'train.max_steps'" in message


def test_unknown_section_suggests_full_key():
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        load_config(None, ["trian.lr=1"])


@pytest.mark.parametrize("override, key", [
    ("train.lr=abc", "train.lr"),
    ("train.max_steps=1.5", "train.max_steps"),
    ("run.resume=maybe", "run.resume"),
    ("model.trainable=3", "model.trainable"),
])
def test_wrong_type_names_key_and_source(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value) and "command line" in str(err.value)


def test_wrong_type_in_yaml_names_file(tmp_path):
    top = write(tmp_path / "x.yaml", "retrieval:\n  k: three\n")
    with pytest.raises(ConfigError) as err:
        load_config(top)
    assert "retrieval.k" in str(err.value) and str(top) in str(err.value) and "line 2" in str(err.value)


def test_bad_choice_names_key_and_file(tmp_path):
    top = write(tmp_path / "x.yaml", "retrieval:\n  source: web\n")
    with pytest.raises(ConfigError) as err:
        load_config(top)
    assert "retrieval.source" in str(err.value) and str(top) in str(err.value) and "'gold'" in str(err.value)


def test_section_given_a_scalar():
    with pytest.raises(ConfigError, match="'train' .* is a section"):
        load_config(None, ["train=3"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    top = write(tmp_path / "x.yaml", "train:\n  lr: 1\n  max_steps: [1, 2\nrun:\n  seed: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(top)
    assert "malformed YAML" in str(err.value) and str(top) in str(err.value) and "line" in str(err.value)


def test_malformed_override_value():
    with pytest.raises(ConfigError, match="malformed YAML in the command line"):
        load_config(None, ["model.trainable=[qformer"])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_missing_default_names_includer(tmp_path):
    top = write(tmp_path / "x.yaml", "defaults: [does/not/exist.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_config(top)
    assert "does/not/exist.yaml" in str(err.value) and str(top) in str(err.value)


def test_defaults_cycle(tmp_path):
    write(tmp_path / "a.yaml", "defaults: [b.yaml]\n")
    write(tmp_path / "b.yaml", "defaults: [c.yaml]\n")
    write(tmp_path / "c.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "a.yaml")
    message = str(err.value)
    assert "cycle" in message and "a.yaml" in message and "b.yaml" in message and "c.yaml" in message


def test_self_include_is_a_cycle(tmp_path):
    write(tmp_path / "a.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_non_mapping_file(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "x.yaml", "- a\n- b\n"))


def test_bad_interpolation(tmp_path):
    with pytest.raises(ConfigError, match="interpolation"):
        load_config(None, ["run.name=${run.nope}"])


def test_yaml_round_trip_of_resolved_config(tmp_path):
    cfg = load_config(CONFIGS_DIR / "experiment" / "synthetic_finetune.yaml", ["train.lr=0.003"])
    saved = write(tmp_path / "resolved.yaml", to_yaml(cfg))
    assert load_config(saved) == cfg


def test_copy_ready_init_is_refused_for_an_encoder_decoder_llm():
    # The tiny model's settings moved to rablip.synthetic.settings (make_synthetic.py reads them).
    assert load_settings(None, ["model.llm_type=llama", "model.llm_copy_init=true"]).model.llm_copy_init
    with pytest.raises(ConfigError, match="model.llm_copy_init.*decoder-only"):
        load_settings(None, ["model.llm_type=t5", "model.llm_copy_init=true"])


def test_relative_data_paths_resolve_under_data_root_once(tmp_path):
    cfg = load_config(CONFIGS_DIR / "experiment" / "synthetic_pretrain.yaml", [f"data.root={tmp_path}"])
    assert cfg.data.train.path == str(tmp_path / "OpenEnded_mscoco_train2014_questions.json")
    assert (cfg.data.train.image_root, cfg.data.kb.root) == (str(tmp_path), str(tmp_path))
    assert cfg.data.kb.store_dir == str(tmp_path / "kb_store")
    assert cfg.data.extra_pairs.path == str(tmp_path / "extra_pairs" / "pairs.jsonl")
    assert cfg.model.checkpoint == f"{tmp_path}/tiny-instructblip-llama", "interpolated, not resolved"
    absolute = load_config(None, [f"data.root={tmp_path}", "data.val.path=/elsewhere/v.json", "data.kb.path="])
    assert (absolute.data.val.path, absolute.data.kb.path) == ("/elsewhere/v.json", "")
    saved = write(tmp_path / "resolved.yaml", to_yaml(cfg))
    assert load_config(saved) == cfg, "a saved config.yaml loads unchanged"
    relative = load_config(None, ["data.root=some/dir", "data.test.path=t.json"])
    assert relative.data.test.path == str(Path.cwd() / "some" / "dir" / "t.json")


def test_negative_pretraining_loss_weights_are_refused():
    with pytest.raises(ConfigError, match="train.itm_weight"):
        load_config(None, ["train.itm_weight=-1"])
