"""The base of every config section (trainer, ablation grid, SFT build): a yes/no value given where a
number belongs is refused, not read as 0 or 1 (pydantic's lax mode takes `save_every: true` as 1)."""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

import pydantic
from pydantic import BaseModel
from pydantic_core import PydanticCustomError


def _is_number_type(tp: Any) -> bool:
    """int or float, possibly constrained (PositiveInt) or optional — and not also bool."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _is_number_type(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return any(_is_number_type(a) for a in args) and bool not in args
    return tp in (int, float)


def _holds_numbers(tp: Any) -> bool:
    """A list or tuple of numbers (optim.betas, seeds), possibly constrained."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _holds_numbers(get_args(tp)[0])
    return origin in (list, tuple) and any(_is_number_type(a) for a in get_args(tp) if a is not Ellipsis)


def refuse_yes_no(value: Any, tp: Any) -> None:
    """PydanticCustomError when `value` is, or a list/tuple `value` holds, a yes/no value where
    type `tp` wants a number."""
    number = isinstance(value, bool) and _is_number_type(tp)
    if number or (
        isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value) and _holds_numbers(tp)
    ):
        raise PydanticCustomError("number_not_bool", "expected a number, not a yes/no value")


class ConfigSection(BaseModel):
    @pydantic.field_validator("*", mode="before")
    @classmethod
    def _no_yes_no_for_numbers(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None:
            refuse_yes_no(value, field.annotation)
        return value
