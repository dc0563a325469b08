"""A cut-over that never flaps (docs/design.md §3, "cut-over"), on a local stack of its
own: 20 cities serving, each republished 5 times, while 4 clients query them without
pause through the HTTP API. Once any answer for a city comes from version v, no request
sent after it is answered by an older version, whichever execution environment serves
it; no 5xx; each new version answers within AliasCacheSeconds + 1 s of being published.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest

from citymodels_devkit.api_client import ApiClient
from citymodels_devkit.datagen import generate
from tests.integration.conftest import Running, start_stack

CITIES = 20
REPUBLISHES = 5
CLIENTS = 4
ALIAS_CACHE_SECONDS = 5.0
HOUSE = {
    "YEAR_BUILT": 1995, "SQUARE_FEET": 2500, "NUM_BEDROOMS": 3, "NUM_BATHROOMS": 2.5,
    "LOT_ACRES": 1.0, "GARAGE_SPACES": 2, "FRONT_PORCH": "y", "DECK": "n",
}  # fmt: skip


@dataclass(frozen=True)
class Answer:
    city: str
    sent: float
    received: float
    status: int
    version: str
    error: str = ""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A stack whose endpoint keeps every model in memory and whose gate lets a fresh
    sample of the same city through (the gate is not what this test is about)."""
    started = start_stack(
        tmp_path_factory.mktemp("cutover"),
        stack_name="cm-cut",
        load_wait_seconds=10.0,
        parameter_overrides={
            "AliasCacheSeconds": str(int(ALIAS_CACHE_SECONDS)),
            "GateTolerance": "1.0",
        },
    )
    try:
        yield Running(started, started.outputs)
    finally:
        started.stop()


def snapshots(seed: int) -> dict[str, bytes]:
    """One upload per city: the same cities, a fresh sample for every seed."""
    return {
        city: table.to_csv_bytes()
        for city, table, _ in generate(CITIES, 600, seed=seed, noise=5000.0)
    }


def publish_round(stack: Running, seed: int) -> None:
    keys = {
        city: stack.upload(city, data, f"s{seed}.csv") for city, data in snapshots(seed).items()
    }
    for city, key in keys.items():
        final = stack.wait_upload(city, key, timeout=180)
        assert final["status"] == "PUBLISHED", final


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_answers_never_go_back_to_an_older_version(stack: Running) -> None:
    # GIVEN 20 cities serving
    publish_round(stack, seed=1)
    answers: list[Answer] = []
    stop = threading.Event()

    def client(number: int) -> None:
        api = ApiClient(stack.outputs["ApiUrl"], stack.outputs["AdminApiKey"])
        # each client goes round every city, from its own starting point: every city is
        # asked about several times a second
        cities = sorted(snapshots(1))
        turn = number * len(cities) // CLIENTS
        while not stop.is_set():
            city = cities[turn % len(cities)]
            turn += 1
            sent = time.time()
            answer = api.call("POST", f"cities/{city}/predictions", {"instances": [HOUSE]})
            ok = answer.status == 200
            version = answer.body.get("model_version", "") if ok else ""
            error = "" if ok else str(answer.body)
            answers.append(Answer(city, sent, time.time(), answer.status, version, error))

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        # WHEN each city is republished 5 times while 4 clients query without pause
        for seed in range(2, 2 + REPUBLISHES):
            publish_round(stack, seed)
        time.sleep(ALIAS_CACHE_SECONDS + 2)  # the last cut-over, and answers after it
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    # THEN no 5xx (nor anything but 200)
    failed = [(a.city, a.status, a.error) for a in answers if a.status != 200]
    assert answers and not failed, f"{len(failed)} of {len(answers)} failed: {failed[:5]}"
    # AND no request sent after an answer from v was answered by a version older than v
    by_city: dict[str, list[Answer]] = {}
    for answer in answers:
        by_city.setdefault(answer.city, []).append(answer)
    flaps = []
    for city, seen in by_city.items():
        received = sorted(seen, key=lambda a: a.received)
        newest, i = "", 0  # the newest version answered before the current request's send
        for answer in sorted(seen, key=lambda a: a.sent):
            while i < len(received) and received[i].received < answer.sent:
                newest = max(newest, received[i].version)
                i += 1
            if answer.version < newest:
                flaps.append((city, answer.version, newest))
    assert not flaps, f"{len(flaps)} of {len(answers)} answers went back: {flaps[:5]}"
    # AND each republished version answers every request sent from AliasCacheSeconds + 1 s
    # after it was published on (a request sent then gets it or a newer one)
    late = []
    for city, seen in by_city.items():
        versions = [v for v in stack.city(city)["versions"] if v["published_at"]]
        assert len(versions) == 1 + REPUBLISHES, versions
        answered = {answer.version for answer in seen}
        for version in versions[:-1]:  # the first was published before the clients started
            assert version["version"] in answered, f"{city}: {version['version']} never answered"
            due = epoch(version["published_at"]) + ALIAS_CACHE_SECONDS + 1
            late += [
                (city, version["version"], answer.version, round(answer.sent - due, 2))
                for answer in seen
                if answer.sent >= due and answer.version < version["version"]
            ]
    assert not late, f"{len(late)} answers from an older version after the due time: {late[:5]}"
