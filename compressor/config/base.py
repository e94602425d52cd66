"""The option machinery: `option()` declares a setting once (name, type, default, bounds, help and
how the CLI and recipes see it); `Config` validates a stage's settings strictly."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compressor import CompressorError


def option(default: Any = ..., help: str = "", *, flag: str | None = None, short: str | None = None,
           argument: bool = False, recipe: bool = True, setting: bool = True, alias: str | None = None,
           main: bool = False, **bounds) -> Any:
    """A config field with what the CLI and the recipe need to know about it.

    Args:
        flag: the CLI spelling (default: --name-with-dashes; for a bool defaulting to True,
            --name/--no-name).
        argument: a positional CLI argument instead of an option.
        recipe: whether a recipe stage may set it (inputs such as model_dir come from earlier stages).
        setting: whether it is part of the stage's recorded settings and checkpoint fingerprint
            (where to write, whether to resume and which device are not: they change no result).
        main: one of the options a user gives first (`--help` lists them first, in their own panel).
    """
    extra = {"flag": flag, "short": short, "argument": argument, "recipe": recipe, "setting": setting, "main": main}
    return Field(default, description=help, alias=alias, json_schema_extra=extra, **bounds)


def field_extra(info) -> dict:
    return info.json_schema_extra or {}


class Config(BaseModel):
    """Strict: unknown keys, wrong types and out-of-bounds values are errors naming the option."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    @classmethod
    def make(cls, **values):
        """Validate keyword values; every problem becomes one line naming its CLI option."""
        values = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()}
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            raise CompressorError(cls.describe_errors(e)) from None

    @classmethod
    def describe_errors(cls, e: ValidationError, prefix: str = "") -> str:
        parts = []
        for err in e.errors():
            name = str(err["loc"][0]) if err["loc"] else ""
            where = prefix + name if prefix else cls.flag_of(name) if name else ""
            msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"].replace("Value error, ", "")
            shown = f" (got {err['input']!r})" if err["loc"] and err["type"] != "extra_forbidden" else ""
            parts.append(f"{where}: {msg}{shown}" if where else msg)  # a check across options names its own flags
        return "; ".join(parts)

    @classmethod
    def flag_of(cls, name: str) -> str:
        info = cls.model_fields.get(name) or next((f for f in cls.model_fields.values() if f.alias == name), None)
        if info is None:
            return name
        flag = field_extra(info).get("flag")
        return (flag or "--" + (info.alias or name).replace("_", "-")).split("/")[0]

    def settings(self) -> dict:
        """The resolved settings that decide the result: written to model.json, fingerprinted."""
        skip = {n for n, f in type(self).model_fields.items() if not field_extra(f).get("setting", True)}
        return self.model_dump(mode="json", by_alias=True, exclude=skip)


