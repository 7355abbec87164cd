"""Recipe errors: one line per problem, each with its dotted field path and, for a typo, a "did you mean"."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

from imloss_cli.errors import ImlossError


class RecipeError(ImlossError):
    """A recipe that cannot be used; ``problems`` holds one "field.path: reason" line each."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(problems))


def describe(err: Any, root: type[BaseModel]) -> str:
    """One pydantic validation error as "field.path: reason" (``root``: the model validated)."""
    loc = [str(p) for p in err["loc"]]
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key" + _did_you_mean(loc, root)
    elif err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        # Model-level checks name their field as "field: reason"; fold it into the path.
        field, sep, reason = msg.partition(": ")
        if sep and all(part.isidentifier() for part in field.split(".")):
            loc, msg = [*loc, *field.split(".")], reason
    elif err["type"] == "literal_error":
        msg = f"{err['input']!r} is not one of: " + msg.removeprefix("Input should be ")
    elif "input" in err and not isinstance(err["input"], dict):
        msg = f"{msg} (got {err['input']!r})"
    return f"{'.'.join(loc) or '<recipe>'}: {msg}"


def _did_you_mean(loc: list[str], root: type[BaseModel]) -> str:
    model: type[BaseModel] = root
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return ""
        model = field.annotation
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(model.model_fields)}"
