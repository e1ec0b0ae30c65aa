"""Pure, named cleansing transforms; a migration config names them, unit tests call them directly.

See :mod:`processors.transforms.registry` for the names and ``docs/data-contract.md`` for the rules.
"""

from processors.transforms.base import EMPTY_CONTEXT, ReferenceData, TransformContext, clean_text
from processors.transforms.registry import (
    TRANSFORM_NAMES,
    TRANSFORMS,
    BoundTransform,
    Transform,
    TransformName,
    UnknownTransform,
    bind,
    get_transform,
)

__all__ = [
    "EMPTY_CONTEXT",
    "TRANSFORMS",
    "TRANSFORM_NAMES",
    "BoundTransform",
    "ReferenceData",
    "Transform",
    "TransformContext",
    "TransformName",
    "UnknownTransform",
    "bind",
    "clean_text",
    "get_transform",
]
