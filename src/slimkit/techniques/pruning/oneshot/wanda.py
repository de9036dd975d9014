"""The registered ``wanda`` technique object (entry point ``...oneshot.wanda:TECHNIQUE``)."""

from slimkit.techniques.pruning.oneshot.technique import Wanda

TECHNIQUE = Wanda()
