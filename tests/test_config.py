from pathlib import Path

import pytest

from mt import MTError
from mt.config import (
    Config,
    DecodeConfig,
    RNNConfig,
    TransformerConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def test_there_are_recipes_for_every_family():
    names = {str(p.relative_to(p.parents[1])) for p in RECIPES}
    for corpus in ("multi30k", "tatoeba-fra-eng"):
        for fam in ("transformer", "gru", "lstm", "bahdanau", "luong"):
            assert f"{corpus}/{fam}.yaml" in names
            assert f"{corpus}/{fam}-cpu.yaml" in names  # sized for a 2-core CPU and a budget of minutes
    assert any(p.name == "demo.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg.model, (TransformerConfig, RNNConfig))


def test_families_select_their_models():
    root = Path(__file__).resolve().parents[1] / "recipes" / "multi30k"
    assert load_config(root / "gru.yaml").model.attention == "none"
    assert load_config(root / "bahdanau.yaml").model.attention == "bahdanau"
    assert load_config(root / "luong.yaml").model.attention.startswith("luong")
    assert load_config(root / "lstm.yaml").model.cell == "lstm"
    assert load_config(root / "transformer.yaml").model.arch == "transformer"


def test_unknown_keys_are_rejected_with_their_path():
    with pytest.raises(MTError, match="train.lrr"):
        config_from_dict({"train": {"lrr": 1}})
    with pytest.raises(MTError, match="'bogus'"):
        config_from_dict({"bogus": {}})
    # a key of the other architecture is unknown too
    with pytest.raises(MTError, match="model.cell"):
        config_from_dict({"model": {"arch": "transformer", "cell": "gru"}})


def test_types_and_choices_are_checked():
    with pytest.raises(MTError, match="train.max_steps: expected an integer"):
        config_from_dict({"train": {"max_steps": "many"}})
    with pytest.raises(MTError, match="model.arch"):
        config_from_dict({"model": {"arch": "cnn"}})
    with pytest.raises(MTError, match="not one of"):
        config_from_dict({"model": {"arch": "rnn", "attention": "cosine"}})
    with pytest.raises(MTError, match="divisible"):
        config_from_dict({"model": {"d_model": 30, "heads": 4}})
    with pytest.raises(MTError, match=r"model.d_model \(32\) must be divisible by model.dec_heads \(3\)"):
        config_from_dict({"model": {"d_model": 32, "heads": 4, "dec_heads": 3}})
    with pytest.raises(MTError, match="model.dec_ff_dim must be >= 1"):
        config_from_dict({"model": {"dec_ff_dim": 0}})
    with pytest.raises(MTError, match="vocab.joint"):
        config_from_dict({"vocab": {"joint": False}, "model": {"share_embeddings": True}})


def test_bad_decode_values():
    with pytest.raises(MTError, match="beam"):
        DecodeConfig(beam=0)
    with pytest.raises(MTError, match="negative"):
        DecodeConfig(max_len_b=-1)
    with pytest.raises(MTError, match="n-best"):
        DecodeConfig(beam=2, n_best=3)


def test_overrides_are_parsed_as_yaml():
    data = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=3e-4", "model.arch=rnn", "model.cell=lstm", "train.betas=[0.9, 0.99]"])
    cfg = config_from_dict(data)
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.cell == "lstm"
    assert cfg.train.betas == (0.9, 0.99)
    with pytest.raises(MTError, match="key=value"):
        apply_overrides({}, ["train.lr"])


def test_saved_config_round_trips(tmp_path):
    cfg = config_from_dict({"name": "x", "model": {"arch": "rnn", "cell": "lstm"}, "train": {"betas": [0.8, 0.9]}})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert Config() == load_config(None)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(MTError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(MTError, match="not a valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(MTError, match="mapping"):
        load_config(scalar)


def test_decode_errors_name_the_setting_as_the_caller_does():
    """A recipe's name for the setting by default; the command line re-words the same check with its flags."""
    from mt.config import SettingError

    with pytest.raises(SettingError, match=r"^decode\.topp must be in \(0, 1\], got 1\.5$") as e:
        DecodeConfig(topp=1.5)
    assert e.value.worded(lambda key: "--" + key) == "--topp must be in (0, 1], got 1.5"
    with pytest.raises(SettingError) as e:
        DecodeConfig(beam=2, n_best=3)
    assert e.value.worded(str.upper).startswith("N_BEST (3) cannot exceed BEAM (2)")
    with pytest.raises(SettingError, match="decode.len_penalty must be gnmt, d2l or none, got 'huge'"):
        DecodeConfig(len_penalty="huge")


def test_decode_options_combine_one_way() -> None:
    """DecodeConfig.with_options: what mt translate (and mt serve) make of beam/greedy/sample/n_best."""
    from mt.config import SettingError

    base = DecodeConfig(search="greedy", beam=5)
    assert base.with_options(beam=3) == DecodeConfig(search="beam", beam=3)
    assert base.with_options(n_best=8) == DecodeConfig(search="beam", beam=8, n_best=8)  # alone: a wide beam
    assert base.with_options(n_best=2) == DecodeConfig(search="beam", beam=5, n_best=2)
    sampling = DecodeConfig(search="sampling")
    assert sampling.with_options(n_best=4) == DecodeConfig(search="sampling", n_best=4)  # K samples
    assert DecodeConfig().with_options(sample=True, topk=5) == DecodeConfig(search="sampling", topk=5)
    assert DecodeConfig().with_options(greedy=True, beam=None, alpha=None) == DecodeConfig(search="greedy")
    flags = lambda key: "--" + key.replace("_", "-")  # noqa: E731
    for kwargs, message in (({"greedy": True, "beam": 4}, "choose one of --beam, --greedy and --sample"),
                            ({"greedy": True, "sample": True}, "choose one of --beam, --greedy and --sample"),
                            ({"greedy": True, "n_best": 2}, "--n-best > 1 needs beam search or sampling, not --greedy"),
                            ({"beam": 2, "n_best": 3}, "--n-best (3) cannot exceed --beam (2)")):
        with pytest.raises(SettingError) as e:
            DecodeConfig().with_options(**kwargs)
        assert e.value.worded(flags).startswith(message), e.value.worded(flags)
    with pytest.raises(SettingError, match="decode.n_best > 1 needs beam search or sampling"):
        DecodeConfig(search="greedy", n_best=3).with_options()


def test_serve_limits_are_checked_where_they_are_defined() -> None:
    """`mt serve`'s limits: one home for their rules (the command line words them as its flags)."""
    from mt.config import ServeLimits, SettingError

    assert ServeLimits().max_texts == 64
    with pytest.raises(SettingError, match=r"serve.max_texts must be >= 1, got 0"):
        ServeLimits(max_texts=0)
    with pytest.raises(SettingError) as e:
        ServeLimits(queue_size=4, max_texts=8)
    assert e.value.worded(lambda key: "--" + key.replace("_", "-")) == "--queue-size (4) must hold one full request (--max-texts 8)"
    with pytest.raises(SettingError, match="serve.timeout must be > 0 seconds"):
        ServeLimits(timeout=0)
