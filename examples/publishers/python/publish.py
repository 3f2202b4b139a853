#!/usr/bin/python3
"""Publishes one send job to wxdispatch and waits for its outcome (pika).

What every publisher must do (docs/asyncapi.yaml): persistent delivery, `message_id`,
`timestamp`, `content_type`, `user_id`, and a publisher confirm before the job counts as
handed over. The outcome is read from a queue of our own bound to the outcomes exchange, by
the job's id (the outcome's `correlation_id`), and validated against
docs/schema/outcome.schema.json.

Exit status: 0 when the outcome arrived, validates and has the expected status; 1 otherwise
(no confirm, no outcome within TIMEOUT_SECS, an invalid outcome, another status).

Settings (environment): AMQP_URL, JOBS_QUEUE, OUTCOMES_EXCHANGE, APPID (optional), TOUSER,
TEMPLATE_ID, EXPECT_STATUS (default sent), TIMEOUT_SECS (default 30).
"""

import json
import os
import pathlib
import sys
import time
import urllib.parse
import uuid

import jsonschema
import pika

SCHEMA = pathlib.Path(__file__).resolve().parents[3] / "docs/schema/outcome.schema.json"


def main() -> int:
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    jobs_queue = os.environ.get("JOBS_QUEUE", "wxdispatch.jobs")
    exchange = os.environ.get("OUTCOMES_EXCHANGE", "wxdispatch.outcomes")
    timeout = float(os.environ.get("TIMEOUT_SECS", "30"))
    expect = os.environ.get("EXPECT_STATUS", "sent")

    job_id = f"py-{uuid.uuid4().hex[:16]}"
    job = {
        "id": job_id,
        "touser": os.environ.get("TOUSER", "o-publisher-python"),
        "template_id": os.environ.get("TEMPLATE_ID", "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY"),
        "data": {"User": {"value": "Python", "color": "#173177"}},
    }
    if os.environ.get("APPID"):
        job["appid"] = os.environ["APPID"]

    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    # Our own queue for outcomes, bound before the job is published so its outcome cannot be
    # missed. The exchange is the worker's: a passive check says clearly when it is missing.
    ch.exchange_declare(exchange, passive=True)
    reply = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(reply, exchange, routing_key="send.*")

    ch.confirm_delivery()
    props = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,  # persistent
        message_id=job_id,
        timestamp=int(time.time()),
        user_id=urllib.parse.unquote(urllib.parse.urlparse(url).username or "guest"),
    )
    try:
        # mandatory: a job no queue takes (a wrong queue name) is an error, not a silent drop.
        ch.basic_publish("", jobs_queue, json.dumps(job).encode(), props, mandatory=True)
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as e:
        print(f"python: job {job_id} was not confirmed: {e!r}", file=sys.stderr)
        return 1
    print(f"python: published {job_id} (confirmed)")

    schema = json.loads(SCHEMA.read_text())
    deadline = time.monotonic() + timeout
    for method, properties, body in ch.consume(reply, inactivity_timeout=0.5):
        if time.monotonic() > deadline:
            break
        if method is None:
            continue
        ch.basic_ack(method.delivery_tag)
        if properties.correlation_id != job_id:
            continue
        outcome = json.loads(body)
        try:
            jsonschema.validate(outcome, schema, cls=jsonschema.Draft202012Validator)
        except jsonschema.ValidationError as e:
            print(f"python: the outcome does not validate: {e.message}\n{outcome}", file=sys.stderr)
            return 1
        if outcome["id"] != job_id or outcome["status"] != expect:
            print(f"python: expected {expect} for {job_id}, got {outcome}", file=sys.stderr)
            return 1
        print(f"python: outcome {properties.message_id}: {json.dumps(outcome, ensure_ascii=False)}")
        conn.close()
        return 0
    print(f"python: no outcome for {job_id} within {timeout:.0f}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
