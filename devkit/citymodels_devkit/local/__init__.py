"""The local stack: the whole application on one machine, with no AWS account (docs/design.md §4).

Modules:

- :mod:`citymodels_devkit.local.mme`: the multi-model endpoint, the inference pipeline
  [preprocessor → Linear Learner] with SageMaker MME semantics (tiers, single-flight
  loads, the documented errors and CloudWatch metrics).
- :mod:`citymodels_devkit.local.sagemaker`: SageMaker processing and training jobs that
  really run, in worker processes, cut as moto cuts a service (responses, models,
  exceptions, and the runner, staging and executors of the jobs).
"""
