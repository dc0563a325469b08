"""citymodels: the domain code shared by the Lambda functions and the SageMaker containers.

This package is the Lambda layer (``layers/common``) and is also shipped with the
processing code and the preprocessor model, where it runs on the SageMaker
scikit-learn container's Python (3.9). The contract modules therefore use only the
standard library and Python 3.9 syntax:

- :mod:`citymodels.cities`     city ids
- :mod:`citymodels.schema`     the raw CSV columns and the one feature transform
- :mod:`citymodels.validation` streaming validation of uploads, with reports
- :mod:`citymodels.layout`     S3 key builders and parsers
- :mod:`citymodels.versions`   version ids that sort in upload order
- :mod:`citymodels.jobs`       deterministic, stack-scoped job names
- :mod:`citymodels.splits`     the seeded train/validation/test split
- :mod:`citymodels.errors`     named domain errors
"""

__version__ = "0.1.0"
