"""One lock for building Hugging Face models in a process (no import of transformers here).

transformers 5 builds and loads a model by swapping process-wide attributes for no-ops and putting them back
afterwards: `PreTrainedModel.tie_weights` and `init_weights`, torch's init functions, torch's default dtype. Two
threads doing it at once can each put back the other's no-op, and then every model built later in the process is
wrong, silently: a tied head (SmolLM2's, the tiny test models') loads as random weights. Inference loads a champion,
a pinned version and adapters on different threads; tests run several services in one process. CI saw it as a
distilled student answering "customer customer ..."; `tests/unit/test_model_building.py` reproduces the race.

So every Flywheel code path that builds a transformers, PEFT or sentence-transformers model (from a directory or
from a config) does it under `model_building()`; running a built model (forward passes, generation, training steps)
needs no lock. `tests/unit/test_model_building.py` checks the source for builds outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_BUILDING = threading.RLock()


@contextmanager
def model_building() -> Iterator[None]:
    """Hold the process's model-building lock (re-entrant: a build may build another)."""
    with _BUILDING:
        yield
