"""The technique conformance kit: one entry per technique, every check slimkit promises.

Any technique, built in or contributed from another repository, proves itself by adding one
:class:`ConformanceEntry` to a pytest file. The checks: config validation and JSON round
trip; prepare, state_dict round trip, exact strip, deepcopy, ``torch.export`` and validated
ONNX export on a model zoo (CNN, subclassed nested net, LSTM, TransformerEncoder, MiniLM when
installed); exact save / resume mid-training; convergence on digits within the declared
accuracy budget; the claimed deployment metric improving by its declared factor; docs pages.
See docs/contributing/conformance.md.

Example (tests/test_my_noise_conformance.py):
    >>> from slimkit.testing import ConformanceEntry, conformance_tests
    >>> ENTRIES = [ConformanceEntry("my-noise", config=MyNoiseConfig, invalid={"std": -1.0},
    ...                             metric=None)]
    >>> globals().update(conformance_tests(ENTRIES))
"""

from slimkit.testing.checks import (
    CHECKS,
    LIGHT_CHECKS,
    MODEL_CHECKS,
    CheckSkipped,
    ConformanceError,
    cases,
    run_check,
)
from slimkit.testing.entry import METRICS, ConformanceEntry, SampleData
from slimkit.testing.suite import Result, conformance_tests, pass_table, run_conformance
from slimkit.testing.zoo import ZOO, LSTMNet, SubclassedNet, TransformerNet, ZooModel

__all__ = [
    "CHECKS",
    "LIGHT_CHECKS",
    "METRICS",
    "MODEL_CHECKS",
    "ZOO",
    "CheckSkipped",
    "ConformanceEntry",
    "ConformanceError",
    "LSTMNet",
    "Result",
    "SampleData",
    "SubclassedNet",
    "TransformerNet",
    "ZooModel",
    "cases",
    "conformance_tests",
    "pass_table",
    "run_check",
    "run_conformance",
]
