"""citymodels_devkit: everything of citymodels that runs on a laptop, not in Lambda.

The ``citymodels`` command line, the synthetic data generator, the local Linear
Learner, and (later) the local stack. Heavy libraries (numpy, matplotlib) live here,
never in the Lambda layer.
"""

__version__ = "0.1.0"
