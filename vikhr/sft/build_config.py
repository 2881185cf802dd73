"""The config of `vikhr sft build` (YAML), validated before any file is read; errors name the key.

    output:    the chats JSONL to write (OUTPUT.report.json/.md beside it)
    tokenizer: the target tokenizer (vikhr.tokenizer.load); template: its chat template (auto: as sft prepare)
    seed:      sampling seed
    limits:    min_tokens, max_tokens of a whole chat under the template (as `vikhr sft prepare` encodes it)
    dedup:     exact, near, threshold (Jaccard of prompt shingles), num_perm
    reward:    model, scores, threshold | top_fraction, batch_size, device, max_length (optional section)
    sources:   [{name, path (file, glob or list), format, language, min_cyrillic_share,
                 count | fraction, max_rank, reward_threshold | reward_top_fraction, keep_where}]

Relative paths are relative to the current directory, as in the trainer's configs; a `vikhr/assets/...`
path that names nothing there is the installed vikhr's bundled file (vikhr.assets.bundled), so the
bundled configs run from any directory.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import ConfigDict, Field, PositiveInt

from vikhr.assets import bundled
from vikhr.config_section import ConfigSection
from vikhr.errors import VikhrError, config_error_line, read_yaml_mapping
from vikhr.runtime.device import DEVICE_PATTERN
from vikhr.sft.sources import FORMATS
from vikhr.sft.template import AUTO, OWN, TEMPLATES

Fraction = Field(default=None, gt=0, le=1)


class _Section(ConfigSection):
    # strict: a quoted number or yes/no ("2", 'yes') is refused rather than read as one (a typo
    # such as near: 'no' read as true would silently keep near-duplicate removal on)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


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


class KeepRange(_Section):
    """A number field kept within [min, max] (either end may be left out)."""

    min: float | None = None
    max: float | None = None


# keep_where: a field equal to a value, one of a list of values, or a number within a range.
KeepCondition = bool | int | float | str | list[bool | int | float | str] | KeepRange


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
    # Records kept by the fields a collection carries (saiga_scored: opus_score {min: 8},
    # is_bad_by_regex: false; ru_turbo_alpaca: label: ok); others are dropped as not_kept.
    keep_where: dict[str, KeepCondition] = Field(default_factory=dict)

    @pydantic.field_validator("path", mode="before")
    @classmethod
    def _path_texts(cls, value: Any) -> Any:
        """One line naming what is wrong (pydantic's union error named its str branch, path.str)."""
        texts = value if isinstance(value, list) else [value]
        wrong = next((v for v in texts if not isinstance(v, str)), None)
        if wrong is not None or not isinstance(value, (str, list)):
            shown = f"{wrong!r} in the list" if isinstance(value, list) else repr(value)
            raise ValueError(f"give a file, a glob or a list of them (text), got {shown}")
        return value

    @pydantic.field_validator("path")
    @classmethod
    def _bundled_paths(cls, value: str | list[str]) -> str | list[str]:
        return [bundled(v) for v in value] if isinstance(value, list) else bundled(value)

    @pydantic.field_validator("keep_where", mode="before")
    @classmethod
    def _conditions(cls, value: Any) -> Any:
        """Each condition checked here, for one line naming it (pydantic's union tells little)."""
        if not isinstance(value, dict):
            return value
        for name, wanted in value.items():
            if isinstance(wanted, dict):
                numbers = all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in wanted.values()
                )
                if not wanted or set(wanted) - {"min", "max"} or not numbers:
                    raise ValueError(
                        f"{name}: a range is {{min: N, max: N}} (either may be left out), got {wanted!r}"
                    )
            elif not (_scalar(wanted) or (isinstance(wanted, list) and wanted and all(map(_scalar, wanted)))):
                raise ValueError(f"{name}: give a value, a list of values or {{min, max}}, got {wanted!r}")
        return value

    def not_kept(self, record: dict[str, Any]) -> str | None:
        """Why `record` fails `keep_where`, or None when it passes."""
        for name, wanted in self.keep_where.items():
            if name not in record:
                return f"no field {name!r} (keep_where)"
            value = record[name]
            if isinstance(wanted, KeepRange):
                number = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
                if (
                    not number
                    or (wanted.min is not None and value < wanted.min)
                    or (wanted.max is not None and value > wanted.max)
                ):
                    return f"{name} = {value!r}, not within [{wanted.min}, {wanted.max}] (keep_where)"
            elif not any(_same(value, w) for w in (wanted if isinstance(wanted, list) else [wanted])):
                return f"{name} = {value!r}, not {wanted!r} (keep_where)"
        return None

    def files(self) -> list[Path]:
        """The files of `path` (globs expanded, sorted), each once: a file that two of its patterns
        name (a list holding a file and a glob matching it) is read once, where first named.
        VikhrError naming a pattern that matches nothing, or a directory."""
        found: dict[str, Path] = {}
        for pattern in [self.path] if isinstance(self.path, str) else self.path:
            # an existing file whose name holds glob characters ("saiga [v2].jsonl") is that file
            magic = glob.has_magic(pattern) and not Path(pattern).exists()
            # "**" spans any depth of folders (an HF snapshot's data/**/*.parquet), as in data preprocess
            matches = sorted(glob.glob(pattern, recursive=True)) if magic else [pattern]
            directory = next((m for m in matches if Path(m).is_dir()), None)
            if directory is not None:
                what = f"matches the directory {directory}" if magic else "is a directory"
                raise VikhrError(
                    f"source {self.name}: {pattern} {what}, not a file "
                    "(check sources[].path in the config: a file, a glob of files or a list of them)"
                )
            if not matches or not Path(matches[0]).is_file():
                # A config run from another directory than it was written for names no file.
                where = (
                    ""
                    if Path(pattern).is_absolute()
                    else f"; relative to the current directory, {Path.cwd()}"
                )
                raise VikhrError(
                    f"source {self.name}: file not found: {pattern} "
                    f"(check sources[].path in the config{where})"
                )
            for m in matches:
                found.setdefault(os.path.realpath(m), Path(m))
        if not found:
            raise VikhrError(f"source {self.name}: path lists no file (check sources[].path in the config)")
        return list(found.values())


def _scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _same(value: Any, wanted: bool | int | float | str) -> bool:
    """`value == wanted` without Python's True == 1: a yes/no field matches only true or false."""
    return isinstance(value, bool) == isinstance(wanted, bool) and value == wanted


class BuildConfig(_Section):
    output: str
    tokenizer: str
    template: Literal[(AUTO, *TEMPLATES, OWN)] = AUTO  # type: ignore[valid-type]
    seed: int = Field(default=1234, ge=0, lt=2**32)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    dedup: DedupSection = Field(default_factory=DedupSection)
    reward: RewardSection | None = None
    sources: list[SourceConfig] = Field(min_length=1)
    path: Path = Field(
        default=Path("."), exclude=True, strict=False
    )  # the config file (set by load_build_config)

    @pydantic.field_validator("tokenizer")
    @classmethod
    def _bundled_tokenizer(cls, value: str) -> str:
        return bundled(value)


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
    raw = read_yaml_mapping(p, kind="sft build")
    if output is not None:
        raw["output"] = str(output)
    try:
        cfg = BuildConfig.model_validate({**raw, "path": p})
    except pydantic.ValidationError as e:
        raise VikhrError(config_error_line(e.errors()[0], BuildConfig, prefix=f"{p}: ")) from None
    _check(cfg)
    return cfg
