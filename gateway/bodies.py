"""How handlers read request bodies: decoded strictly by msgspec, described to Litestar's OpenAPI.

Litestar converts a `data` body leniently (`"1"` becomes 1); the gateway's bodies are decoded
as msgspec decodes them everywhere else (strict types, unknown fields refused where a struct
says so), with one 400 in the OpenAI shape. Both DTOs document the body as their struct type.
An empty body is no body: the handler's default applies.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from litestar.dto import AbstractDTO
from litestar.typing import FieldDefinition

from store.errors import InvalidRequest

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.dto.data_structures import DTOFieldDefinition
    from litestar.openapi.spec import Reference, Schema

T = TypeVar("T")


def decode_body(raw: bytes, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise InvalidRequest(f"invalid request: {exc}") from None


class Raw(AbstractDTO[T]):
    """The body's bytes, untouched (the hot path decodes them itself); documented as `T`."""

    @classmethod
    def create_for_field_definition(
        cls, field_definition: FieldDefinition, handler_id: str, backend_cls: object = None
    ) -> None:
        """Nothing to build: no transfer model, no backend."""

    @classmethod
    def is_supported_model_type_field(cls, field_definition: FieldDefinition) -> bool:
        return False  # a request DTO only: answers are encoded as they are

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: SchemaCreator
    ) -> Reference | Schema:
        return schema_creator.for_field_definition(FieldDefinition.from_annotation(cls.model_type))

    @classmethod
    def generate_field_definitions(
        cls, model_type: type[Any]
    ) -> Generator[DTOFieldDefinition, None, None]:
        raise NotImplementedError  # never called: create_for_field_definition builds nothing

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        return False

    def decode_bytes(self, value: bytes) -> Any:
        return value


class Json(Raw[T]):
    """The body decoded into `T` by msgspec (strict), a 400 if it does not fit."""

    def decode_bytes(self, value: bytes) -> Any:
        return decode_body(value, self.model_type)
