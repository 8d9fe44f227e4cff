"""Flywheel monitor: windows of logged predictions per model version, drift, performance, alerts."""

import os

# Evidently sends anonymous usage events unless DO_NOT_TRACK is set; it must be set before
# evidently is imported anywhere in the process (the monitor never talks to the outside).
os.environ.setdefault("DO_NOT_TRACK", "1")
