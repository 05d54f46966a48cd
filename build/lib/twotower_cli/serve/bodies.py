"""The request bodies of `twotower serve`: pydantic models parsed in one pass from the raw
bytes, their 4xx messages, and their place in the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, StrictBool, StrictInt, ValidationError

from twotower_cli.serve.encoding import UserQuery


def _item_id(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("an item id is a string or an integer")
    return value


ItemId = Annotated[Any, AfterValidator(_item_id)]


class UserBody(BaseModel):
    """One user: raw feature values (`user_id` alone is enough for a known user)."""

    model_config = ConfigDict(extra="forbid")
    # raw values, checked against the run's features by UserEncoder (messages name the feature)
    user: dict[str, Any]
    history: list[ItemId] | None = None
    exclude: list[ItemId] = []
    exclude_seen: StrictBool = True

    def query(self) -> UserQuery:
        return UserQuery(self.user, self.history, tuple(self.exclude), self.exclude_seen)


class RecommendBody(UserBody):
    k: StrictInt = 20


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: list[UserBody]
    k: StrictInt = 20


def parse(model: type[BaseModel], raw: bytes) -> Any:
    """The request body parsed and validated in one pass by pydantic-core (FastAPI's body
    dependency decodes the JSON first, then validates). Errors take FastAPI's route
    (RequestValidationError), so every 4xx looks the same."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def field_name(loc: tuple) -> str:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path") else loc
    return ".".join(str(p) for p in parts) or str(loc[0] if loc else "body")


_BODY_MODELS: dict[str, dict] = {}


def body_doc(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of a route that parses its body itself; the model's schema (and
    the ones it nests) join the document's components in `with_bodies`."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    _BODY_MODELS.update(schema.pop("$defs", {}))
    _BODY_MODELS[model.__name__] = schema
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def with_bodies(app: FastAPI) -> Callable[[], dict]:
    build = app.openapi

    def openapi() -> dict:
        doc = build()
        doc.setdefault("components", {}).setdefault("schemas", {}).update(_BODY_MODELS)
        return doc

    return openapi
