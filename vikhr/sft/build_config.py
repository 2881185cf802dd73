"""The config of `vikhr sft build` (YAML), validated before any file is read; errors name the key.

    output:    the chats JSONL to write (OUTPUT.report.json/.md beside it)
    tokenizer: the target tokenizer (vikhr.tokenizer.load); template: its chat template (auto: as sft prepare)
    seed:      sampling seed
    limits:    min_tokens, max_tokens of a whole chat under the template (as `vikhr sft prepare` encodes it)
    dedup:     exact, near, threshold (Jaccard of prompt shingles), num_perm
    reward:    model, scores, threshold | top_fraction, batch_size, device, max_length (optional section)
    sources:   [{name, path (file, glob or list), format, language, min_cyrillic_share,
                 count | fraction, max_rank, reward_threshold | reward_top_fraction}]

Relative paths are relative to the current directory, as in the trainer's configs.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import ConfigDict, Field, PositiveInt

from vikhr.config_section import ConfigSection
from vikhr.errors import VikhrError, config_error_line, read_yaml_mapping
from vikhr.runtime.device import DEVICE_PATTERN
from vikhr.sft.sources import FORMATS
from vikhr.sft.template import AUTO, OWN, TEMPLATES

Fraction = Field(default=None, gt=0, le=1)


class _Section(ConfigSection):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LimitsSection(_Section):
    min_tokens: int = Field(default=8, ge=0)
    max_tokens: PositiveInt = 4096


class DedupSection(_Section):
    exact: bool = True
    near: bool = True
    threshold: float = Field(default=0.8, gt=0, lt=1)
    num_perm: int = Field(default=128, ge=16, le=1024)


class RewardSection(_Section):
    model: str
    scores: str
    threshold: float | None = None
    top_fraction: float | None = Fraction
    batch_size: PositiveInt = 16
    device: str = Field(default="auto", pattern=f"^({DEVICE_PATTERN})$")
    max_length: PositiveInt = 2048


class SourceConfig(_Section):
    name: str = Field(pattern=r"^[\w.-]+$")
    path: str | list[str]
    format: Literal[FORMATS] | None = None  # type: ignore[valid-type]
    language: str | None = None
    min_cyrillic_share: float | None = Field(default=None, ge=0, le=1)
    count: PositiveInt | None = None
    fraction: float | None = Fraction
    max_rank: PositiveInt | None = None
    reward_threshold: float | None = None
    reward_top_fraction: float | None = Fraction

    def files(self) -> list[Path]:
        """The files of `path` (globs expanded, sorted); VikhrError naming what matches nothing."""
        found = []
        for pattern in [self.path] if isinstance(self.path, str) else self.path:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            if not matches or not Path(matches[0]).is_file():
                raise VikhrError(
                    f"source {self.name}: file not found: {pattern} (check sources[].path in the config)"
                )
            found += [Path(m) for m in matches]
        if not found:
            raise VikhrError(f"source {self.name}: path lists no file (check sources[].path in the config)")
        return found


class BuildConfig(_Section):
    output: str
    tokenizer: str
    template: Literal[(AUTO, *TEMPLATES, OWN)] = AUTO  # type: ignore[valid-type]
    seed: int = Field(default=1234, ge=0, lt=2**32)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    dedup: DedupSection = Field(default_factory=DedupSection)
    reward: RewardSection | None = None
    sources: list[SourceConfig] = Field(min_length=1)
    path: Path = Field(default=Path("."), exclude=True)  # the config file (set by load_build_config)


def _check(cfg: BuildConfig) -> None:
    names = [s.name for s in cfg.sources]
    for name in names:
        if names.count(name) > 1:
            raise VikhrError(f"{cfg.path}: two sources are named {name!r} (names must differ)")
    if cfg.limits.min_tokens > cfg.limits.max_tokens:
        raise VikhrError(f"{cfg.path}: limits.min_tokens is above limits.max_tokens")
    for s in cfg.sources:
        if s.count is not None and s.fraction is not None:
            raise VikhrError(f"{cfg.path}: source {s.name}: give count or fraction, not both")
        if s.reward_threshold is not None and s.reward_top_fraction is not None:
            raise VikhrError(f"{cfg.path}: source {s.name}: give reward_threshold or reward_top_fraction")
        if cfg.reward is None and (s.reward_threshold is not None or s.reward_top_fraction is not None):
            raise VikhrError(f"{cfg.path}: source {s.name} sets a reward cut but the config has no reward:")
    if cfg.reward is not None and cfg.reward.threshold is not None and cfg.reward.top_fraction is not None:
        raise VikhrError(f"{cfg.path}: reward: give threshold or top_fraction, not both")


def load_build_config(path: str | Path, output: str | Path | None = None) -> BuildConfig:
    """The validated config at `path` (`output` replaces its output:)."""
    p = Path(path)
    raw = read_yaml_mapping(p)
    if output is not None:
        raw["output"] = str(output)
    try:
        cfg = BuildConfig.model_validate({**raw, "path": p})
    except pydantic.ValidationError as e:
        raise VikhrError(config_error_line(e.errors()[0], BuildConfig, prefix=f"{p}: ")) from None
    _check(cfg)
    return cfg
