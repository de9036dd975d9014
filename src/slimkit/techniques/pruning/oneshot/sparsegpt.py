"""The registered ``sparsegpt`` technique object (entry point ``...oneshot.sparsegpt:TECHNIQUE``)."""

from slimkit.techniques.pruning.oneshot.technique import SparseGPT

TECHNIQUE = SparseGPT()
