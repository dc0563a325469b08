"""Running the template's Lambda functions in-process, and routing events to them.

Handlers are the unchanged ``functions/<name>/app.py`` modules, imported once (their
configuration is read at import, as in Lambda) with the environment the template gives
them, and the standard ``AWS_ENDPOINT_URL`` pointing every boto3 client at the local
stack. There is no ``if local:`` anywhere in handler code.

Event routing follows the template: each EventBridge rule of a function becomes a real
rule on moto's EventBridge with an SQS target (moto does the content filtering, with
the rule's own pattern), and a poller delivers each matched event to the handler. Each
queue has one receiver (a long poll of up to 10 messages, so an idle queue costs one
``ReceiveMessage`` per :data:`POLL_WAIT_SECONDS`, not one per worker per second) that
hands messages to the function's workers, and one deleter (``DeleteMessageBatch`` of
what the workers finished). A
handler that raises is retried (``EventInvokeConfig.MaximumRetryAttempts``, with
backoff), then a dead-letter record in Lambda's OnFailure format goes to the function's
OnFailure queue — visible to ``citymodels status``. SQS event sources (the capacity
retry queue) are polled and delivered in Lambda's SQS event format. Schedules (the
reconciler's) invoke their function with EventBridge's ``Scheduled Event`` at the
template's rate, from a timer thread that stops with the router.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import queue
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from citymodels_devkit.local.template import (
    ACCOUNT_ID,
    REGION,
    Function,
    ResolvedTemplate,
    Schedule,
)

log = logging.getLogger("citymodels.local")

POLL_WAIT_SECONDS = 5
"""A receiver's long poll: it answers as soon as a message arrives, and an idle queue
costs one ReceiveMessage this often. Also how long stopping the router can take."""
SQS_BATCH = 10
"""SQS's most messages per ReceiveMessage and entries per DeleteMessageBatch."""
DELETE_LINGER_SECONDS = 0.5
"""How long a finished message waits for others to be deleted with it (it is hidden
meanwhile: nothing else receives it)."""
RULE_QUEUE_VISIBILITY_SECONDS = 900
"""The rule target queues' visibility timeout: a message received in a batch may wait
for a free worker; it must not reappear meanwhile (Lambda's longest timeout)."""


@dataclass
class LambdaContext:
    """What a handler reads from its Lambda context."""

    function_name: str
    timeout_seconds: int
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = ""
    log_stream_name: str = "local"
    function_version: str = "$LATEST"
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        self.log_group_name = f"/aws/lambda/{self.function_name}"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class DeadLetter:
    """An event a handler kept failing on, after its retries."""

    function: str
    event: Any
    error: str
    attempts: int
    time: float


class FunctionHost:
    """Imports the stack's handlers and invokes them, one event per execution environment.

    Like Lambda, an execution environment (one import of the handler module, with its
    own module-level state: Powertools Logger keys, Metrics, the API resolver's current
    event) handles one event at a time; concurrent events get further environments, up
    to ``max_concurrency`` per function, created on demand.

    Parameters
    ----------
    stack
        The resolved template.
    max_concurrency
        Execution environments per function.
    """

    def __init__(self, stack: ResolvedTemplate, *, max_concurrency: int = 4) -> None:
        self.stack = stack
        self.max_concurrency = max_concurrency
        self._idle: dict[str, list[Callable[[Any, Any], Any]]] = {}
        self._created: dict[str, int] = {}
        self._cond = threading.Condition()
        self.cold_starts = 0

    @staticmethod
    def environment(stack: ResolvedTemplate) -> dict[str, str]:
        """Return the union of the functions' environments (one process hosts them all).

        Raises
        ------
        ValueError
            When two functions give one variable different values: they could not
            share a process, and silently picking one would be wrong.
        """
        merged: dict[str, str] = {}
        owners: dict[str, str] = {}
        for function in stack.functions.values():
            for name, value in function.environment.items():
                if name in merged and merged[name] != value:
                    raise ValueError(
                        f"{function.logical_id} and {owners[name]} set {name} differently "
                        f"({value!r} vs {merged[name]!r}); the local stack runs them in one process"
                    )
                merged[name], owners[name] = value, function.logical_id
        return merged

    def warm(self, logical_id: str) -> None:
        """Create one execution environment now (import the handler), so errors show early."""
        self._release(logical_id, self._acquire(logical_id))

    def _acquire(self, logical_id: str) -> Callable[[Any, Any], Any]:
        with self._cond:
            while True:
                idle = self._idle.setdefault(logical_id, [])
                if idle:
                    return idle.pop()
                if self._created.get(logical_id, 0) < self.max_concurrency:
                    self._created[logical_id] = self._created.get(logical_id, 0) + 1
                    number = self._created[logical_id]
                    break
                self._cond.wait()
        try:
            return self._import(self.stack.functions[logical_id], number)
        except BaseException:
            with self._cond:
                self._created[logical_id] -= 1
                self._cond.notify()
            raise

    def _release(self, logical_id: str, handler: Callable[[Any, Any], Any]) -> None:
        with self._cond:
            self._idle[logical_id].append(handler)
            self._cond.notify()

    def _import(self, function: Function, number: int) -> Callable[[Any, Any], Any]:
        module_name, _, attribute = function.handler.rpartition(".")
        path = function.code_dir / f"{module_name.replace('.', '/')}.py"
        if not path.exists():
            raise FileNotFoundError(f"{function.logical_id}: handler file {path} not found")
        unique = f"citymodels_fn_{function.logical_id}_{number}"
        spec = importlib.util.spec_from_file_location(unique, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        code_dir = str(function.code_dir)
        sys.path.insert(0, code_dir)  # a handler may import its sibling modules
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(code_dir)
        handler = getattr(module, attribute, None)
        if not callable(handler):
            raise ImportError(f"{path} has no callable {attribute!r}")
        self.cold_starts += 1
        return handler  # type: ignore[no-any-return]

    def invoke(self, logical_id: str, event: Any) -> Any:
        """Invoke a function synchronously and return its result (exceptions propagate)."""
        function = self.stack.functions[logical_id]
        handler = self._acquire(logical_id)
        try:
            context = LambdaContext(
                function_name=f"{self.stack.name}-{logical_id}", timeout_seconds=function.timeout
            )
            return handler(event, context)
        finally:
            self._release(logical_id, handler)


class EventRouter:
    """Delivers EventBridge-matched events and SQS messages to the handlers.

    Parameters
    ----------
    stack
        The resolved template.
    host
        Where the handlers run.
    events, sqs
        boto3 clients on the local AWS endpoint.
    workers_per_function
        How many events of one function are handled at once (Lambda's concurrency).
    """

    def __init__(
        self,
        stack: ResolvedTemplate,
        host: FunctionHost,
        events: Any,
        sqs: Any,
        *,
        queue_urls: Mapping[str, str],
        workers_per_function: int = 4,
        retry_base_seconds: float = 0.2,
    ) -> None:
        self.stack = stack
        self.host = host
        self.events = events
        self.sqs = sqs
        self.queue_urls = dict(queue_urls)  # logical id -> URL
        self.workers = workers_per_function
        self.retry_base_seconds = retry_base_seconds
        self.dead_letters: list[DeadLetter] = []
        self.delivered = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._deleters: list[tuple[threading.Thread, queue.Queue[str | None]]] = []
        self._inflight = 0
        self._inflight_lock = threading.Lock()

    def setup_rules(self) -> None:
        """Create one moto rule + SQS target per EventBridge rule of the template."""
        for rule in self.stack.rules:
            name = f"{self.stack.name}-{rule.name}"[:64]
            queue_url = self.sqs.create_queue(
                QueueName=f"{name}-target"[:80],
                Attributes={"VisibilityTimeout": str(RULE_QUEUE_VISIBILITY_SECONDS)},
            )["QueueUrl"]
            queue_arn = self.sqs.get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
            self.events.put_rule(Name=name, EventPattern=json.dumps(rule.pattern), State="ENABLED")
            self.events.put_targets(Rule=name, Targets=[{"Id": "target", "Arn": queue_arn}])
            deliver = self._rule_delivery(rule.function)
            self._poll(f"rule {rule.name}", queue_url, deliver, batch=SQS_BATCH)
        for source in self.stack.queue_sources:
            url = self.queue_urls[source.queue]
            deliver = self._sqs_delivery(source.function, url)
            # At most one message per free worker: a message of a template queue must
            # not wait here past the queue's own visibility timeout.
            self._poll(f"sqs {source.queue}", url, deliver, batch=0, attributes=True)

    def setup_schedules(self, period_seconds: float | None = None) -> None:
        """Invoke each scheduled function at its template's rate, until :meth:`stop`.

        Parameters
        ----------
        period_seconds
            Every this many seconds instead of the template's rate (tests: a short one).
        """
        for schedule in self.stack.schedules:
            period = schedule.period_seconds if period_seconds is None else period_seconds
            thread = threading.Thread(
                target=self._tick,
                args=(schedule, period),
                name=f"schedule {schedule.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _tick(self, schedule: Schedule, period: float) -> None:
        # Like EventBridge: the first event one period after the schedule is created.
        while not self._stop.wait(period):
            self._track(1)
            try:
                self._deliver(schedule.function, scheduled_event(self.stack.name, schedule))
            finally:
                self._track(-1)

    @property
    def busy(self) -> bool:
        """Whether any event is being handled right now."""
        return self._inflight > 0

    def _track(self, delta: int) -> None:
        with self._inflight_lock:
            self._inflight += delta

    def _poll(
        self,
        name: str,
        queue_url: str,
        deliver: Callable[[dict[str, Any]], bool],
        *,
        batch: int,
        attributes: bool = False,
    ) -> None:
        """Start one queue's receiver, its ``self.workers`` workers and its deleter.

        Parameters
        ----------
        deliver
            Handles one received message; True when the message is to be deleted.
        batch
            The most messages received at once (waiting here for a worker); 0 for no
            more than the free workers.
        """
        backlog: queue.Queue[dict[str, Any] | None] = queue.Queue()
        finished: queue.Queue[str | None] = queue.Queue()
        room = threading.Condition()
        pending = [0]  # received and not yet handled

        def receive() -> None:
            try:
                while not self._stop.is_set():
                    with room:
                        # nothing is received while every worker is busy
                        if not room.wait_for(lambda: pending[0] < self.workers, timeout=0.2):
                            continue
                        want = batch or self.workers - pending[0]
                    try:
                        answer = self.sqs.receive_message(
                            QueueUrl=queue_url,
                            MaxNumberOfMessages=min(want, SQS_BATCH),
                            WaitTimeSeconds=POLL_WAIT_SECONDS,
                            **({"AttributeNames": ["All"]} if attributes else {}),
                        )
                    except Exception:
                        if self._stop.wait(0.2):
                            return
                        continue
                    messages = answer.get("Messages", [])
                    if self._stop.is_set():
                        self._release(queue_url, messages)
                        return
                    with room:
                        pending[0] += len(messages)
                    self._track(len(messages))
                    for message in messages:
                        backlog.put(message)
            finally:
                for _ in range(self.workers):
                    backlog.put(None)

        def work() -> None:
            while True:
                message = backlog.get()
                if message is None:
                    return
                try:
                    if self._stop.is_set():
                        self._release(queue_url, [message])
                    elif deliver(message):
                        finished.put(message["ReceiptHandle"])
                finally:
                    self._track(-1)
                    with room:
                        pending[0] -= 1
                        room.notify_all()

        def delete() -> None:
            while True:
                handle = finished.get()
                if handle is None:
                    return
                handles = [handle]
                lingered = time.monotonic() + DELETE_LINGER_SECONDS
                while len(handles) < SQS_BATCH:
                    try:
                        more = finished.get(timeout=max(0.0, lingered - time.monotonic()))
                    except queue.Empty:
                        break
                    if more is None:
                        finished.put(None)  # stop after this batch
                        break
                    handles.append(more)
                self._delete(queue_url, handles)

        receiver = threading.Thread(target=receive, name=f"{name} receiver", daemon=True)
        workers = [
            threading.Thread(target=work, name=f"{name} #{i}", daemon=True)
            for i in range(self.workers)
        ]
        deleter = threading.Thread(target=delete, name=f"{name} deleter", daemon=True)
        for thread in (receiver, *workers, deleter):
            thread.start()
        self._threads.extend([receiver, *workers])
        self._deleters.append((deleter, finished))

    def _delete(self, queue_url: str, handles: list[str]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
        try:
            answer = self.sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        except Exception as err:  # the messages come back after their visibility timeout
            log.warning("could not delete %d message(s) from %s: %s", len(handles), queue_url, err)
            return
        for failed in answer.get("Failed", []):
            log.warning("could not delete a message from %s: %s", queue_url, failed)

    def _release(self, queue_url: str, messages: list[dict[str, Any]]) -> None:
        """Make messages received but not handled (the router is stopping) visible again."""
        for start in range(0, len(messages), SQS_BATCH):
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(messages[start : start + SQS_BATCH])
            ]
            try:
                self.sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
            except Exception as err:
                log.warning("could not release %d message(s): %s", len(entries), err)

    def _rule_delivery(self, function: str) -> Callable[[dict[str, Any]], bool]:
        def deliver(message: dict[str, Any]) -> bool:
            # retried, then dead-lettered, by _deliver: the message is done either way
            self._deliver(function, json.loads(message["Body"]))
            return True

        return deliver

    def _deliver(self, function: str, event: Any) -> None:
        spec = self.stack.functions[function]
        attempts = spec.max_retries + 1
        error = ""
        for attempt in range(1, attempts + 1):
            try:
                self.host.invoke(function, event)
                self.delivered += 1
                return
            except Exception as err:
                error = f"{type(err).__name__}: {err}"
                log.warning("%s failed (attempt %d of %d): %s", function, attempt, attempts, error)
                log.debug("%s", traceback.format_exc())
                if attempt < attempts and not self._stop.wait(
                    self.retry_base_seconds * 2 ** (attempt - 1)
                ):
                    continue
                break
        self._dead_letter(function, event, error, attempts)

    def _dead_letter(self, function: str, event: Any, error: str, attempts: int) -> None:
        self.dead_letters.append(DeadLetter(function, event, error, attempts, time.time()))
        queue = self.stack.functions[function].on_failure_queue
        if queue and queue in self.queue_urls:
            record = {  # Lambda's OnFailure destination record
                "version": "1.0",
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                "requestContext": {
                    "requestId": str(uuid.uuid4()),
                    "functionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.stack.name}-{function}:$LATEST",
                    "condition": "RetriesExhausted",
                    "approximateInvokeCount": attempts,
                },
                "requestPayload": event,
                "responseContext": {
                    "statusCode": 200,
                    "executedVersion": "$LATEST",
                    "functionError": "Unhandled",
                },
                "responsePayload": {"errorMessage": error},
            }
            self.sqs.send_message(QueueUrl=self.queue_urls[queue], MessageBody=json.dumps(record))

    def _sqs_delivery(self, function: str, queue_url: str) -> Callable[[dict[str, Any]], bool]:
        queue_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{queue_url.rsplit('/', 1)[-1]}"

        def deliver(message: dict[str, Any]) -> bool:
            record = {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message.get("Attributes", {}),
                "messageAttributes": message.get("MessageAttributes", {}),
                "md5OfBody": message.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
            try:
                self.host.invoke(function, {"Records": [record]})
            except Exception as err:
                # Left in the queue: SQS delivers it again after its visibility timeout.
                log.warning("%s failed on an SQS message: %s", function, err)
                return False
            self.delivered += 1
            return True

        return deliver

    def stop(self) -> None:
        """Stop polling, wait for the pollers (a long poll ends within
        :data:`POLL_WAIT_SECONDS`), then delete what they finished."""
        self._stop.set()
        deadline = time.monotonic() + POLL_WAIT_SECONDS + 5
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for deleter, finished in self._deleters:
            finished.put(None)
            deleter.join(timeout=max(1.0, deadline - time.monotonic()))


def scheduled_event(stack: str, schedule: Schedule) -> dict[str, Any]:
    """EventBridge's ``Scheduled Event`` for a schedule of the stack (as Lambda receives it)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{stack}-{schedule.name}"],
        "detail": {},
    }
