from pathlib import Path

import pytest

from luckystack.daemon.cli import main
from luckystack.daemon.config import ConfigError, Settings, load_settings, pipeline_params

REPO = Path(__file__).resolve().parents[2]


def test_example_config_loads_and_equals_the_defaults():
    example = load_settings(REPO / "config.example.toml")
    assert example.model_dump() == Settings().model_dump()


def test_env_overrides_toml(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('preset = "default"\n[stack]\nbuffer_size = 80\n')
    monkeypatch.setenv("LUCKYSTACK_STACK__BUFFER_SIZE", "200")
    monkeypatch.setenv("LUCKYSTACK_PRESET", "seed")
    s = load_settings(cfg)
    assert s.stack.buffer_size == 200
    assert s.preset == "seed"


def test_init_overrides_env(monkeypatch):
    monkeypatch.setenv("LUCKYSTACK_PRESET", "seed")
    assert load_settings(preset="default").preset == "default"


def test_every_problem_reported_with_location(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        'preset = "fancy"\n[stack]\nbufer_size = 3\nbuffer_size = 0\n[watch]\nexisting = "some"\n[nosuch]\nx = 1\n'
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    problems = exc.value.problems
    text = "\n".join(problems)
    assert "preset:" in text
    assert "[stack] bufer_size: unknown key" in text
    assert "[stack] buffer_size:" in text
    assert "[watch] existing:" in text
    assert "nosuch:" in text
    assert len(problems) == 5


def test_missing_file_and_bad_toml_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[stack\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_keep_cannot_exceed_buffer(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[stack]\nbuffer_size = 10\nkeep = 20\n")
    with pytest.raises(ConfigError, match="exceeds buffer_size"):
        load_settings(cfg)


def test_seed_preset_maps_to_origin_pipeline():
    p = pipeline_params(load_settings(preset="seed"))
    assert p.method == "seed" and p.register is False and p.buffer_size == 20
    d = pipeline_params(load_settings(preset="default"))
    assert d.method == "default"


def test_check_config_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[stack]\nbuffer_size = -1\n[sharpen]\nmethod = 'x'\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "[stack] buffer_size" in err and "[sharpen] method" in err
    assert main(["check-config", str(REPO / "config.example.toml")]) == 0
    assert '"buffer_size": 20' in capsys.readouterr().out


def test_sharpen_steps_from_toml_and_their_errors(tmp_path):
    from luckystack.core.sharpen import DeconvolveStep, UnsharpStep

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[sharpen.steps]]\nkind = "deconvolve"\npsf = "gaussian"\nsigma_px = 1.2\n'
        '[[sharpen.steps]]\nkind = "unsharp"\nradius_px = 2.0\namount = 0.5\n'
    )
    p = pipeline_params(load_settings(cfg))
    assert p.sharpen.method == "chain"
    assert isinstance(p.sharpen.steps[0], DeconvolveStep) and p.sharpen.steps[0].sigma_px == 1.2
    assert isinstance(p.sharpen.steps[1], UnsharpStep)
    # the seed preset keeps the origin's sharpener whatever the chain
    assert pipeline_params(load_settings(cfg, preset="seed")).sharpen.method == "gaussian_laplacian"
    cfg.write_text('[[sharpen.steps]]\nkind = "deconvolve"\npsf = "airy"\n'
                   '[[sharpen.steps]]\nkind = "blur"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    text = "\n".join(exc.value.problems)
    assert "steps[0]: psf must be one of" in text and "steps[1]: unknown sharpening step kind" in text


def test_align_section_maps_to_the_pipeline(tmp_path, monkeypatch):
    d = pipeline_params(load_settings())
    assert d.alignment_points and d.uses_alignment_points() and not d.uses_drizzle()
    assert (d.ap_box_px, d.ap_step_px, d.ap_min_frames, d.ap_search_px) == (0, 0, 5, 4.0)
    assert (d.drizzle_scale, d.drizzle_pixfrac) == (1.0, 0.7)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[align]\nap_box_px = 40\nap_step_px = 24\nap_min_frames = 3\n"
                   "ap_search_px = 2.5\ndrizzle_scale = 1.5\ndrizzle_pixfrac = 0.5\n")
    monkeypatch.setenv("LUCKYSTACK_ALIGN__ALIGNMENT_POINTS", "false")
    p = pipeline_params(load_settings(cfg))
    assert not p.alignment_points and not p.uses_alignment_points()
    assert (p.ap_box_px, p.ap_step_px, p.ap_min_frames, p.ap_search_px) == (40, 24, 3, 2.5)
    assert (p.drizzle_scale, p.drizzle_pixfrac) == (1.5, 0.5) and p.uses_drizzle()
    # the seed preset is the origin script whatever [align] says
    seed = pipeline_params(load_settings(cfg, preset="seed"))
    assert not seed.uses_alignment_points() and not seed.uses_drizzle()


def test_align_problems_are_reported(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[align]\nap_box_px = 5\nap_step_px = 2\ndrizzle_scale = 0.5\n"
                   "drizzle_pixfrac = 0\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    text = "\n".join(exc.value.problems)
    for key in ("ap_box_px", "ap_step_px", "drizzle_scale", "drizzle_pixfrac"):
        assert f"[align] {key}:" in text
    cfg.write_text('[align]\ndrizzle_scale = 2\n[stack]\ncombine = "median"\n')
    with pytest.raises(ConfigError, match='drizzle_scale = 2 needs \\[stack\\] combine = "mean"'):
        load_settings(cfg)
    assert load_settings(cfg, preset="seed").preset == "seed"  # seed: no drizzle, no conflict
