"""SageMaker processing and training jobs that really run, for the local stack.

moto records ``CreateProcessingJob`` and ``CreateTrainingJob`` and nothing happens;
on AWS the job runs a container and emits state-change events that drive the
application. This package serves the job operations of the SageMaker API (the AWS
endpoint, ``local/aws.py``, hands them over) and runs each job, cut as moto cuts a
service:

- :mod:`.responses`: the wire. :data:`~.responses.OPERATIONS`, and
  :func:`~.responses.handle`, which checks a request, calls the backend and shapes
  the JSON answer;
- :mod:`.shapes`: requests checked against botocore's SageMaker model (required
  members, types, lengths, patterns, enums; job names
  ``^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$``), with SageMaker's messages;
- :mod:`.exceptions`: the API's error answers (``ValidationException``,
  ``ResourceInUse``, ``ResourceLimitExceeded``...);
- :mod:`.models`: the backend, :class:`~.models.JobService`: the jobs and their
  state, ``ResourceInUse`` and the ``max_active_jobs`` capacity, the state-change
  events (shaped as SageMaker's: ``detail`` = the Describe fields, times in epoch
  milliseconds), and what the stack keeps of the jobs across restarts;
- :mod:`.runner`: the pool of long-lived worker processes (``spawn``, ``max_workers``,
  default 2) each job runs in, one at a time, phase by phase (``Downloading``,
  ``Training``, ``Uploading``); what the job prints is its log
  (:meth:`~.models.JobService.log`, CloudWatch Logs on AWS);
- :mod:`.staging`: a job's S3 inputs downloaded into its container directory and its
  outputs uploaded where SageMaker puts them, through the stack's own AWS endpoint
  with boto3 (so job outputs are ordinary S3 writes, with their ``Object Created``
  events, as on AWS);
- :mod:`.executors`: what an image runs (the scikit-learn image runs the job's Python
  entrypoint, the linear-learner image the local Linear Learner).

Limits (each says so where it applies): S3 inputs only (``S3Prefix``, not
``ManifestFile``, no Gzip channels, no dataset definitions); ``StopProcessingJob`` /
``StopTrainingJob`` take effect between the job's phases (a running script is not
interrupted; its outputs are not uploaded); ``MaxRuntimeInSeconds`` is not enforced.
"""
