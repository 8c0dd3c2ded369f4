"""Shared pytest configuration: the hypothesis profiles.

``HYPOTHESIS_PROFILE`` selects one (default ``ci``):

* ``dev``: a fifth of the CI examples, for a quick local loop;
* ``ci``: what CI runs on every push (hundreds of random models, about a minute);
* ``nightly``: twenty times the CI examples, for a scheduled job
  (``HYPOTHESIS_PROFILE=nightly python -m pytest tests/test_properties.py``).

Tests scale their example counts with :func:`tests.strategies.examples`, so a
profile changes every property test at once.  No deadline: solve times vary on
shared CI machines.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", max_examples=20, **_COMMON)
settings.register_profile("ci", max_examples=100, **_COMMON)
settings.register_profile("nightly", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
