"""The compact storage of clustered weights now lives in :mod:`slimkit.storage.codebook`
(shared: any weight with few values is stored that way); this module re-exports it."""

from slimkit.storage.codebook import (  # noqa: F401
    MAX_CODES,
    compact_graph,
    compact_initializers,
    compact_int8,
    encode,
    encode_int8,
    expand_compact,
)
