"""The local multi-model endpoint (MME): the inference pipeline with SageMaker's MME semantics.

:class:`~.models.MultiModelEndpoint` behaves like a SageMaker endpoint running the
inference pipeline [scikit-learn preprocessor container → Linear Learner in MultiModel
mode] (docs/design.md §4): the local stack's ASGI front calls
:meth:`~.models.MultiModelEndpoint.invoke` for every ``POST
/endpoints/{name}/invocations`` and sends :meth:`~.responses.InvokeResult.render`'s
answer back, which boto3's ``sagemaker-runtime`` client parses like AWS's.

The package is cut as moto cuts a service:

- :mod:`.models`: the endpoint (:class:`~.models.MultiModelEndpoint`, configured by one
  :class:`~.models.EndpointOptions`): the memory and disk tiers, the loads, the pipeline
  run, the counters;
- :mod:`.responses`: what a client gets: :class:`~.responses.InvokeResult` on the wire,
  and the error answers with SageMaker's codes and messages;
- :mod:`.metrics`: the CloudWatch metrics, accumulated between drains;
- :mod:`.preprocessor`: the pipeline's first container, loaded from its artifact.

**The pipeline.** The preprocessor is loaded once, from its artifact (``model.tar.gz``
holding ``preprocessor.json`` and ``code/inference.py`` with ``code/citymodels/``),
exactly as the scikit-learn container does it: ``code/inference.py`` is imported from the
extracted directory, ``model_fn(model_dir)`` runs once, then every request goes through
``input_fn`` → ``predict_fn`` → ``output_fn`` (CSV, the container's
``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``), and the CSV goes to the target model's
:meth:`~citymodels_devkit.linear_learner.LinearLearnerModel.invoke`.

**The MME.** A target model is loaded on its first call and kept in two tiers:

- *memory*: loaded models, least recently used first out. A load evicts until the new
  model fits every configured bound: ``max_models``, ``max_memory_mb`` (sum of the
  loaded models' sizes, see :func:`~.models.estimate_model_bytes`) and ``high_water_mark`` (the
  ``MemoryUtilization`` the load would cause). A model bigger than the bounds on its own
  still loads, alone.
- *disk*: the downloaded artifacts in ``cache_dir``. A model evicted from memory reloads
  from disk without a new download, as on SageMaker; the disk tier is bounded by
  ``disk_capacity_mb`` (artifacts of unloaded models go first, least recently used).

Concurrent first calls for one model share one download and one load (single flight).
Loads run on background threads: a request that waits longer than ``load_wait_seconds``
gets ``ModelNotReadyException`` (429) while the load carries on, and later calls succeed.

**Errors** (the wire format is in :meth:`~.responses.InvokeResult.render`):

====================================  ============  ====================================
what                                  HTTP / code   detail
====================================  ============  ====================================
bad TargetModel, body over 6 MB       400 ValidationError
artifact missing or not downloadable  400 ValidationError  "Failed to download model data ... for target model ..."
artifact not a loadable model         424 ModelError   OriginalStatusCode 500, from ``linear-learner``
preprocessor rejects the rows         424 ModelError   OriginalStatusCode 400, from ``preprocessor``; the message names row and field
Linear Learner rejects the features   424 ModelError   OriginalStatusCode 400, from ``linear-learner``
still loading after the wait          429 ModelNotReadyException
====================================  ============  ====================================

One deliberate difference from AWS: the real scikit-learn container (sagemaker-containers'
``Transformer``) maps only ``UnsupportedFormatError`` to a 4xx; a ``ValueError`` from
``input_fn`` becomes Flask's HTML ``500 Internal Server Error``, so on AWS the caller gets
ModelError with OriginalStatusCode 500 and no field name. Locally it is 400 with the
preprocessor's message, which is what the container means. Clients must not rely on
either: the predict function validates rows before it calls the endpoint.

**Metrics** (:meth:`~.models.MultiModelEndpoint.drain_metrics`), under their AWS names, units and
dimensions (``EndpointName``, ``VariantName``): in ``AWS/SageMaker`` the per-invocation
``Invocations``, ``ModelCacheHit`` (1 hit, 0 miss: Average is the hit ratio),
``ModelLatency``, ``Invocation4XXErrors``, ``Invocation5XXErrors`` and, when they happen,
``ModelLoadingWaitTime``, ``ModelDownloadingTime``, ``ModelLoadingTime``,
``ModelUnloadingTime`` (microseconds), as statistic sets; in ``/aws/sagemaker/Endpoints``
the gauges ``LoadedModelCount``, ``MemoryUtilization`` and ``DiskUtilization`` (percent),
sampled when drained.

The hot path (a loaded model) takes no lock but one short critical section for the LRU
order and the metric sums, logs nothing and copies nothing.
"""
