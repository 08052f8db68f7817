"""Configuration: TOML file + environment (LUCKYSTACK_*), validated by pydantic.

Priority, highest first: command-line overrides, environment variables
(``LUCKYSTACK_PRESET=seed``, ``LUCKYSTACK_STACK__BUFFER_SIZE=200``), the TOML
file, the defaults. Every problem in a bad config is reported at once, each
with its location (``[stack] buffer_size: ...``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from luckystack.core.pipeline import PipelineParams, SharpenParams
from luckystack.core.sharpen import SharpenStep, make_step

__all__ = [
    "ConfigError",
    "Settings",
    "InputSettings",
    "PreviewSettings",
    "load_settings",
    "pipeline_params",
    "PRESETS",
]

PRESETS = ("default", "seed")
DEFAULT_SUFFIXES = (
    ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".fits", ".fit", ".fts", ".ser",
)
BAYER_CHOICES = ("auto", "none", "RGGB", "GRBG", "GBRG", "BGGR")


class ConfigError(ValueError):
    """A configuration that cannot be used; ``problems`` lists each one."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration ({source}):\n{lines}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WatchSettings(_Section):
    """``[watch]``: how the capture folder is watched."""

    recursive: bool = False
    polling: bool = False
    poll_interval_s: float = Field(0.5, gt=0, le=60)
    settle_s: float = Field(1.0, gt=0, le=600)
    timeout_s: float = Field(30.0, gt=0, le=86400)
    existing: Literal["all", "none"] = "all"
    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES
    follow_symlinks: bool = False
    on_folder_lost: Literal["wait", "exit"] = "wait"
    queue_size: int = Field(10000, ge=1)
    max_lag_frames: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _suffixes_have_dots(self) -> WatchSettings:
        bad = [s for s in self.suffixes if not s.startswith(".") or len(s) < 2]
        if bad:
            raise ValueError(f"suffixes must look like '.png', got {bad}")
        return self


class InputSettings(_Section):
    """``[input]``: how frames are decoded (Bayer mosaics)."""

    bayer_pattern: Literal["auto", "none", "RGGB", "GRBG", "GBRG", "BGGR"] = "auto"
    debayer_method: Literal["bilinear", "ea", "vng"] = "bilinear"

    @field_validator("bayer_pattern", mode="before")
    @classmethod
    def _pattern_case(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return text.lower() if text.lower() in ("auto", "none") else text.upper()
        return value


class CropSettings(_Section):
    """``[crop]``: finding the planet."""

    margin: float = Field(0.15, ge=0, le=2)
    min_contrast: float = Field(8.0, gt=0)


class QualitySettings(_Section):
    """``[quality]``: frame scoring and rejection."""

    blur_px: float = Field(1.0, ge=0, le=10)
    min_ratio: float = Field(0.25, ge=0, le=1)
    best_fraction: float = Field(0.25, gt=0, le=1)
    history: int = Field(50, ge=5)
    max_size_change: float = Field(0.2, gt=0)
    max_saturated_fraction: float = Field(0.01, ge=0, le=1)


class RegistrationSettings(_Section):
    """``[registration]``: sub-pixel alignment."""

    enabled: bool = True
    min_peak: float = Field(0.3, ge=0, le=1)


class AlignSettings(_Section):
    """``[align]``: local alignment (alignment points) and drizzle (default preset).

    ``[registration]`` removes each frame's global shift; alignment points
    then de-warp it locally (anisoplanatic seeing). Drizzle resamples the
    selected frames onto a finer grid; it needs ``[stack] combine = "mean"``.
    """

    alignment_points: bool = True
    ap_box_px: int = Field(0, ge=0, le=1024)
    ap_step_px: int = Field(0, ge=0, le=1024)
    ap_min_frames: int = Field(5, ge=1)
    ap_search_px: float = Field(4.0, gt=0, le=64)
    drizzle_scale: float = Field(1.0, ge=1, le=4)
    drizzle_pixfrac: float = Field(0.7, gt=0, le=1)

    @field_validator("ap_box_px", "ap_step_px")
    @classmethod
    def _auto_or_large_enough(cls, value: int, info: Any) -> int:
        least = 8 if info.field_name == "ap_box_px" else 4
        if 0 < value < least:
            raise ValueError(f"must be 0 (auto) or >= {least}, got {value}")
        return value


class StackSettings(_Section):
    """``[stack]``: the rolling buffer and how it is combined."""

    buffer_size: int = Field(20, ge=1, le=100_000)
    keep: int | None = Field(None, ge=1)
    keep_fraction: float | None = Field(None, gt=0, le=1)
    combine: Literal["mean", "median", "sigma_clip"] = "mean"
    weighting: Literal["none", "quality"] = "none"

    @model_validator(mode="after")
    def _keep_fits(self) -> StackSettings:
        if self.keep is not None and self.keep_fraction is not None:
            raise ValueError("set keep or keep_fraction, not both")
        if self.keep is not None and self.keep > self.buffer_size:
            raise ValueError(f"keep ({self.keep}) exceeds buffer_size ({self.buffer_size})")
        return self


class SharpenSettings(_Section):
    """``[sharpen]``: sharpening of the stack.

    ``method = "chain"`` runs ``[[sharpen.steps]]`` in order (the measured
    default chain when there are none); each step table has a ``kind``
    (unsharp, wavelet, deconvolve, kernel, gaussian_laplacian) and that
    step's fields. ``gaussian_laplacian`` and ``kernel`` are the origin's
    sharpeners (``sigma_px``/``amount`` apply to the former).
    """

    method: Literal["chain", "gaussian_laplacian", "kernel", "none"] = "chain"
    steps: tuple[dict[str, Any], ...] = ()
    luminance_only: bool = True
    dering: bool = True
    highlight_knee: float | None = Field(0.9, ge=0, lt=1)
    sigma_px: float = Field(1.0, gt=0, le=20)
    amount: float = Field(1.0, ge=0, le=20)

    @field_validator("steps")
    @classmethod
    def _steps_are_valid(cls, steps: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        problems = []
        for i, table in enumerate(steps):
            try:
                make_step(**table)
            except (TypeError, ValueError) as err:
                problems.append(f"steps[{i}]: {err}")
        if problems:
            raise ValueError("; ".join(problems))
        return steps

    def chain(self) -> tuple[SharpenStep, ...]:
        return tuple(make_step(**table) for table in self.steps)


class OutputSettings(_Section):
    """``[output]``: where results go."""

    folder: Path | None = None
    write_comparison: bool = True
    #: While frames arrive, ``watch`` rewrites stacked.png after every frame
    #: (or batch) but sharpened.png and comparison.png at most this often
    #: (sharpening costs ~40 ms per write); all are up to date once frames pause.
    sharpened_interval_s: float = Field(1.0, ge=0, le=3600)
    #: While frames arrive, ``watch`` compresses its PNGs (false: stores them
    #: uncompressed, ~10x less CPU to encode, files ~16 % larger, rewritten
    #: compressed when frames pause).
    compress_live: bool = True


class LoggingSettings(_Section):
    """``[logging]``."""

    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    json_file: Path | None = None
    rotation: str = "10 MB"
    retention: int = Field(5, ge=1)


class PreviewSettings(_Section):
    """``[preview]``: the live preview in the browser (``watch`` only).

    A read-only web page with the latest image and the session's numbers,
    updated live. No authentication: it listens on this machine only unless
    ``host`` says otherwise (``"0.0.0.0"``: every interface, e.g. for a phone
    on the observatory's network). A change on reload (SIGHUP) restarts it.
    """

    enabled: bool = False
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8080, ge=0, le=65535)
    max_clients: int = Field(16, ge=1, le=256)


class Settings(BaseSettings):
    """The whole configuration. Sections mirror ``config.example.toml``."""

    model_config = SettingsConfigDict(
        env_prefix="LUCKYSTACK_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    preset: Literal["default", "seed"] = "default"
    watch: WatchSettings = WatchSettings()
    input: InputSettings = InputSettings()
    crop: CropSettings = CropSettings()
    quality: QualitySettings = QualitySettings()
    registration: RegistrationSettings = RegistrationSettings()
    align: AlignSettings = AlignSettings()
    stack: StackSettings = StackSettings()
    sharpen: SharpenSettings = SharpenSettings()
    output: OutputSettings = OutputSettings()
    logging: LoggingSettings = LoggingSettings()
    preview: PreviewSettings = PreviewSettings()

    @model_validator(mode="after")
    def _drizzle_needs_mean(self) -> Settings:
        if self.preset == "default" and self.align.drizzle_scale > 1 and self.stack.combine != "mean":
            raise ValueError(
                f"[align] drizzle_scale = {self.align.drizzle_scale:g} needs [stack] combine = "
                f'"mean" (drizzle is a weighted mean), not "{self.stack.combine}"'
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if settings_cls.model_config.get("toml_file"):
            sources += (TomlConfigSettingsSource(settings_cls),)
        return sources


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if not parts:
        return "(top level)"
    if len(parts) == 1:
        return parts[0]
    return f"[{parts[0]}] " + ".".join(parts[1:])


def _problems(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against config.example.toml)"
        out.append(f"{_format_loc(tuple(e['loc']))}: {msg}")
    return out


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (TOML), the environment and ``overrides``.

    Raises
    ------
    ConfigError
        If the file is missing or unreadable, is not valid TOML, or any value
        is invalid; the error lists every problem with its location.
    """
    source = str(path) if path is not None else "defaults + environment"
    cls: type[Settings] = Settings
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(source, [f"config file not found: {path}"])
        try:
            with path.open("rb") as fh:
                tomllib.load(fh)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(source, [f"not valid TOML: {err}"]) from err
        except OSError as err:
            raise ConfigError(source, [f"cannot read: {err}"]) from err

        class _FileSettings(Settings):
            model_config = SettingsConfigDict(toml_file=path)

        cls = _FileSettings
    try:
        settings = cls(**overrides)
    except ValidationError as err:
        raise ConfigError(source, _problems(err)) from err
    return settings


def pipeline_params(settings: Settings) -> PipelineParams:
    """Convert settings into the core's parameters (the daemon/core boundary).

    ``preset = "seed"`` reproduces the origin script: its crop, its stack
    (scaled to the largest crop, plain mean of the whole buffer) and its
    Gaussian+Laplacian sharpening; only ``buffer_size``, the crop margin and
    the sharpening strength are taken from the settings (``[align]`` does not
    apply).
    """
    s = settings
    sharpen = SharpenParams(
        method=s.sharpen.method,
        steps=s.sharpen.chain(),
        luminance_only=s.sharpen.luminance_only,
        dering=s.sharpen.dering,
        highlight_knee=s.sharpen.highlight_knee,
        sigma_px=s.sharpen.sigma_px,
        amount=s.sharpen.amount,
    )
    if s.preset == "seed":
        # The origin sharpened with Gaussian blur + Laplacian, whatever the chain.
        sharpen = SharpenParams(
            method="gaussian_laplacian", sigma_px=s.sharpen.sigma_px, amount=s.sharpen.amount
        )
        return PipelineParams(
            method="seed",
            crop_margin=s.crop.margin,
            min_contrast=s.crop.min_contrast,
            buffer_size=s.stack.buffer_size,
            quality_blur_px=s.quality.blur_px,
            register=False,
            alignment_points=False,
            sharpen=sharpen,
        )
    return PipelineParams(
        method="default",
        crop_margin=s.crop.margin,
        min_contrast=s.crop.min_contrast,
        buffer_size=s.stack.buffer_size,
        keep=s.stack.keep,
        keep_fraction=s.stack.keep_fraction,
        combine=s.stack.combine,
        weighting=s.stack.weighting,
        quality_blur_px=s.quality.blur_px,
        min_quality_ratio=s.quality.min_ratio,
        best_fraction=s.quality.best_fraction,
        quality_history=s.quality.history,
        max_size_change=s.quality.max_size_change,
        max_saturated_fraction=s.quality.max_saturated_fraction,
        register=s.registration.enabled,
        min_peak=s.registration.min_peak,
        alignment_points=s.align.alignment_points,
        ap_box_px=s.align.ap_box_px,
        ap_step_px=s.align.ap_step_px,
        ap_min_frames=s.align.ap_min_frames,
        ap_search_px=s.align.ap_search_px,
        drizzle_scale=s.align.drizzle_scale,
        drizzle_pixfrac=s.align.drizzle_pixfrac,
        sharpen=sharpen,
    )
