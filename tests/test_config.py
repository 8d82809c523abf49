import pytest

from core.config import build_config, config_from_dict, parse_override
from core.errors import ConfigError


def test_paper_preset_is_the_paper_recipe():
    c = build_config("paper")
    assert (c.model.arch, c.model.img_size, c.model.mask_ratio) == ("vit_large_patch16", 224, 0.75)
    assert (c.model.decoder_depth, c.model.decoder_embed_dim, c.model.decoder_num_heads) == (8, 512, 16)
    assert c.model.target == "pixel" and c.data.augmentation == "crop_rand"
    p = c.pretrain
    assert (p.batch_size, p.blr, p.betas, p.weight_decay, p.epochs, p.warmup_epochs) == \
        (4096, 1.5e-4, (0.9, 0.95), 0.05, 800, 40)
    assert c.lr == pytest.approx(1.5e-4 * 4096 / 256)


def test_overrides_are_typed_literals():
    c = build_config("tiny", ["pretrain.epochs=3", "model.mask_ratio=0.5", "model.mask_token_in_encoder=true",
                              "pretrain.betas=(0.9,0.99)", "pretrain.clip_grad=1", "eval.linprobe.pool=avg"])
    assert c.pretrain.epochs == 3 and c.model.mask_ratio == 0.5 and c.model.mask_token_in_encoder is True
    assert c.pretrain.betas == (0.9, 0.99) and c.pretrain.clip_grad == 1.0
    assert c.eval.linprobe.pool == "avg"


def test_string_settings_take_the_text_verbatim():
    c = build_config("tiny", ["data.augmentation=none", "data.path=123", "pretrain.clip_grad=none"])
    assert c.data.augmentation == "none" and c.data.path == "123" and c.pretrain.clip_grad is None
    quoted = build_config("tiny", ["data.augmentation='crop_rand'", 'cluster.time="1:00:00"', "data.path='a"])
    assert quoted.data.augmentation == "crop_rand" and quoted.cluster.time == "1:00:00" and quoted.data.path == "'a"


def test_values_are_never_evaluated():
    key, value = parse_override("data.path=__import__('os').system('echo pwned')")
    assert value == "__import__('os').system('echo pwned')"  # stays a string


@pytest.mark.parametrize("override, message", [
    ("model.mask_ration=0.5", "did you mean model.mask_ratio"),
    ("pretrain.epochs=ten", "pretrain.epochs must be int"),
    ("pretrain.epochs=2.5", "pretrain.epochs must be int"),
    ("model.mask_ratio=1.0", "mask_ratio must be in (0, 1)"),
    ("model.mask_ratio=0", "mask_ratio must be in (0, 1)"),
    ("model.img_size=30", "not a positive multiple of the patch size"),
    ("pretrain.epochs=-1", "pretrain.epochs must be >= 1"),
    ("model.mask_strategy=spiral", "model.mask_strategy='spiral' is not one of"),
    ("model.target=sound", "model.target='sound' is not one of"),
    ("model.mask_strategy=grid", None),  # 0.75 on an 8x8 grid is fine
    ("pretrain.batch_size=100", None),
    ("nokey", "not of the form key=value"),
])
def test_bad_overrides_name_the_problem(override, message):
    if message is None:
        build_config("tiny", [override])
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config("tiny", [override])


def test_grid_needs_a_fitting_ratio():
    with pytest.raises(ConfigError, match="grid masking"):
        build_config("tiny", ["model.mask_strategy=grid", "model.mask_ratio=0.6"])


def test_run_id_is_stable_and_ignores_paths():
    a = build_config("tiny", ["run.results_dir=/a", "data.num_workers=3", "pretrain.log_every=7"])
    b = build_config("tiny", ["run.results_dir=/b"])
    assert a.run_id() == b.run_id() == build_config("tiny").run_id()
    assert a.run_id() != build_config("tiny", ["model.mask_ratio=0.5"]).run_id()
    assert a.run_id() != build_config("tiny", ["pretrain.seed=1"]).run_id()
    # evaluation settings do not change which pretraining run it is
    assert a.run_id() == build_config("tiny", ["eval.linprobe.epochs=3"]).run_id()
    # the FFCV backend draws other crops from the same seed: other weights, another run
    assert a.run_id() != build_config("tiny", ["data.backend=ffcv"]).run_id()


def test_config_round_trips_through_a_plain_dict():
    c = build_config("tiny", ["model.mask_ratio=0.6"])
    assert config_from_dict(c.to_dict()) == c
