"""protocol.logformat and the worker's logging: one format for the process tree, no token."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

from protocol.logformat import JsonFormatter, TokenRedactor
from worker.main import configure_logging
from worker.spec import WorkerSpec

SECRET = "Nzk1.secret-token-value"


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def spec(log_json: bool) -> WorkerSpec:
    return WorkerSpec(
        worker_id=3,
        shard_ids=(0,),
        total_shards=1,
        token=SECRET,
        intents=1,
        gateway_url="ws://127.0.0.1:1/",
        event_endpoint="tcp://127.0.0.1:1",
        log_json=log_json,
    )


@pytest.mark.usefixtures("restore_root_logger")
def test_a_json_worker_writes_json_lines_with_its_id_and_never_the_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(spec(log_json=True))
    logging.getLogger("worker.shard").warning("shard %d: token %s leaked", 0, SECRET)
    [line] = capsys.readouterr().err.splitlines()
    body = orjson.loads(line)
    assert body["worker_id"] == 3 and body["level"] == "warning"
    assert body["logger"] == "worker.shard" and body["msg"] == "shard 0: token <token> leaked"
    assert SECRET not in line


@pytest.mark.usefixtures("restore_root_logger")
def test_a_text_worker_names_itself_in_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(spec(log_json=False))
    logging.getLogger("worker").info("hello")
    [line] = capsys.readouterr().err.splitlines()
    assert " worker-3 INFO worker: hello" in line


def test_fields_of_the_call_come_before_the_static_ones() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.fields = {"worker_id": 9, "event": "e"}
    body = orjson.loads(JsonFormatter({"worker_id": 1, "host": "h"}).format(record))
    assert (body["worker_id"], body["event"], body["host"]) == (9, "e", "h")
    assert TokenRedactor("").filter(record)
