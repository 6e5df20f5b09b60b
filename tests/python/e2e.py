"""End-to-end scenarios with the official RocketMQ Python client (rocketmq-python-client),
run by tests/python_client.rs against a broker it started: `e2e.py ADDRESS SCENARIO`.
Prints "ok" and exits 0 when the scenario holds; anything else is a failure."""

import gzip
import sys
import time
import uuid

import grpc
from rocketmq.grpc_protocol import definition_pb2, service_pb2, service_pb2_grpc
from rocketmq.v5.client import ClientConfiguration, Credentials
from rocketmq.v5.consumer import LiteSimpleConsumer, SimpleConsumer
from rocketmq.v5.exception import LiteSubscriptionQuotaExceededException
from rocketmq.v5.model import FilterExpression, Message
from rocketmq.grpc_protocol import FilterType
from rocketmq.v5.producer import Producer


def config(address):
    return ClientConfiguration(address, Credentials(), request_timeout=5)


def drain(consumer, want, seconds=10):
    """Receives and acks until `want` messages arrived or `seconds` passed."""
    got, deadline = [], time.time() + seconds
    while len(got) < want and time.time() < deadline:
        for m in consumer.receive(16, 15) or []:
            consumer.ack(m)
            got.append(m)
    return got


def sql92(address):
    topic, group = "py-orders", "py-eu-payments-" + uuid.uuid4().hex[:8]
    producer = Producer(config(address), (topic,))
    producer.startup()
    batch = [("eu", "150", "paid"), ("us", "150", "paid"), ("eu", "50", "paid"), ("eu", "500", "created")]
    for i, (region, amount, tag) in enumerate(batch):
        m = Message()
        m.topic = topic
        m.body = str(i).encode()
        m.tag = tag
        m.add_property("region", region)
        m.add_property("amount", amount)
        producer.send(m)
    producer.shutdown()
    expression = FilterExpression("region IN ('eu', 'uk') AND amount > 100 AND TAGS = 'paid'", FilterType.SQL)
    consumer = SimpleConsumer(config(address), group, {topic: expression}, await_duration=2)
    consumer.startup()
    got = drain(consumer, 2, seconds=6)
    consumer.shutdown()
    bodies = [m.body.decode() for m in got]
    assert bodies == ["0"], f"SQL92 subscription received {bodies}"


def gzip_body(address):
    topic, group = "py-zipped", "py-unzip-" + uuid.uuid4().hex[:8]
    original = ("order 42 paid; " * 400).encode()
    compressed = gzip.compress(original)
    # The Python producer never compresses; send the GZIP body the way the Java client does.
    message = definition_pb2.Message(
        topic=definition_pb2.Resource(name=topic),
        system_properties=definition_pb2.SystemProperties(
            message_id=uuid.uuid4().hex.upper(),
            body_encoding=definition_pb2.GZIP,
            message_type=definition_pb2.NORMAL,
        ),
        body=compressed,
    )
    stub = service_pb2_grpc.MessagingServiceStub(grpc.insecure_channel(address))
    response = stub.SendMessage(service_pb2.SendMessageRequest(messages=[message]), timeout=5)
    assert response.status.code == definition_pb2.OK, response.status
    consumer = SimpleConsumer(config(address), group, {topic: FilterExpression()}, await_duration=2)
    consumer.startup()
    got = drain(consumer, 1)
    consumer.shutdown()
    assert len(got) == 1, f"received {len(got)} messages"
    assert not got[0].corrupted, "the body digest did not match"
    assert got[0].body == original, "the decompressed body differs"


def recall(address):
    topic, group = "py-reminders", "py-reminded-" + uuid.uuid4().hex[:8]
    producer = Producer(config(address), (topic,))
    producer.startup()
    receipts = {}
    for body in ("recalled", "kept"):
        m = Message()
        m.topic = topic
        m.body = body.encode()
        m.delivery_timestamp = int(time.time()) + 3  # seconds, as the Python client sends it
        receipts[body] = producer.send(m)
    handle = receipts["recalled"].recall_handle
    assert handle, "a delay message's receipt has a recall handle"
    assert producer.recall_message(topic, handle) == receipts["recalled"].message_id
    try:
        producer.recall_message(topic, handle)
        raise AssertionError("a second recall succeeded")
    except AssertionError:
        raise
    except Exception as e:  # the client raises the broker's status as an exception
        assert "NOT_FOUND" in str(e) or "40400" in str(e), f"unexpected error: {e!r}"
    producer.shutdown()
    consumer = SimpleConsumer(config(address), group, {topic: FilterExpression()}, await_duration=2)
    consumer.startup()
    got = drain(consumer, 2, seconds=7)
    consumer.shutdown()
    bodies = sorted(m.body.decode() for m in got)
    assert bodies == ["kept"], f"received {bodies}"


def priority(address):
    # The test created py-urgent as a PRIORITY topic with 4 queues (priorities 0 to 3).
    topic, group = "py-urgent", "py-workers-" + uuid.uuid4().hex[:8]
    producer = Producer(config(address), (topic,))
    producer.startup()
    for body, p in (("low-1", 0), ("low-2", 0), ("high", 3), ("mid", 1)):
        m = Message()
        m.topic = topic
        m.body = body.encode()
        m.priority = p
        producer.send(m)
    producer.shutdown()
    consumer = SimpleConsumer(config(address), group, {topic: FilterExpression()}, await_duration=2)
    consumer.startup()
    got = []
    deadline = time.time() + 8
    while len(got) < 4 and time.time() < deadline:
        for m in consumer.receive(16, 15) or []:
            consumer.ack(m)
            got.append((m.body.decode(), m.priority))
    consumer.shutdown()
    assert got == [("high", 3), ("mid", 1), ("low-1", 0), ("low-2", 0)], f"received {got}"


def lite(address):
    # The test created py-chat as a LITE topic: one lite topic per chat room.
    topic, group = "py-chat", "py-chat-readers-" + uuid.uuid4().hex[:8]
    consumer = LiteSimpleConsumer(topic, config(address), group, await_duration=2)
    consumer.startup()
    # startup() does not wait for the broker's Settings, and until they arrive the client
    # thinks its lite subscription quota is 0.
    deadline = time.time() + 5
    while True:
        try:
            consumer.subscribe_lite("room-a")
            break
        except LiteSubscriptionQuotaExceededException:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    consumer.subscribe_lite("room-b")
    # Python 5.1.2's subscribe_lite sends the name's characters as the set (it extends a
    # repeated field with a string); its complete sync, every 30 s or now with
    # subscribe_lite_all(), sends the names it holds.
    consumer.subscribe_lite_all()
    producer = Producer(config(address), (topic,))
    producer.startup()

    def send_round(n):
        for room in ("room-a", "room-b", "room-c"):
            m = Message()
            m.topic = topic
            m.body = f"{room}-{n}".encode()
            m.lite_topic = room
            producer.send(m)

    send_round(1)
    got = drain(consumer, 3, seconds=6)
    seen = sorted((m.lite_topic, m.body.decode()) for m in got)
    assert seen == [("room-a", "room-a-1"), ("room-b", "room-b-1")], f"subscribed to a and b, received {seen}"
    consumer.unsubscribe_lite("room-a")
    send_round(2)
    got = drain(consumer, 2, seconds=5)
    seen = sorted((m.lite_topic, m.body.decode()) for m in got)
    assert seen == [("room-b", "room-b-2")], f"subscribed to b only, received {seen}"
    producer.shutdown()
    consumer.shutdown()


def cluster(address):
    # Three nodes of one cluster (the test placed `py-spread` over them, 3 queues each, and
    # `py-pay` as a TRANSACTION topic): the producers know node 1 only, the consumer node 2.
    import os
    from rocketmq.grpc_protocol import TransactionResolution
    from rocketmq.v5.producer import TransactionChecker
    consume_at = os.environ["PY_CONSUME_AT"]
    producer = Producer(config(address), ("py-spread",))
    producer.startup()
    sent, label = set(), {}
    for i in range(60):
        m = Message()
        m.topic = "py-spread"
        m.body = f"m{i}".encode()
        receipt = producer.send(m)
        sent.add(receipt.message_id)
        label[receipt.message_id] = f"m{i} at {receipt.message_queue}@{receipt.offset}"
    producer.shutdown()

    class Checker(TransactionChecker):
        def check(self, message):
            return TransactionResolution.COMMIT

    tp = Producer(config(address), ("py-pay",), Checker())
    tp.startup()
    committed = set()
    for i in range(6):
        for decision in ("commit", "rollback"):
            transaction = tp.begin_transaction()
            m = Message()
            m.topic = "py-pay"
            m.body = f"{decision}-{i}".encode()
            receipt = tp.send(m, transaction)
            # Python sends EndTransaction to the receipt's endpoint: node 1 here.
            if decision == "commit":
                transaction.commit()
                committed.add(receipt.message_id)
                label[receipt.message_id] = f"commit-{i} at {receipt.message_queue}"
            else:
                transaction.rollback()
    tp.shutdown()

    consumer = SimpleConsumer(config(consume_at), "py-spread-readers-" + uuid.uuid4().hex[:8],
                              {"py-spread": FilterExpression(), "py-pay": FilterExpression()}, await_duration=1)
    consumer.startup()
    got = drain(consumer, 66, seconds=40)
    consumer.shutdown()
    ids = [m.message_id for m in got]
    assert len(ids) == len(set(ids)), "a message arrived twice"
    missing = sorted(label[i] for i in (sent | committed) - set(ids))
    assert set(ids) == sent | committed, f"received {len(ids)}: missing {missing}, extra {len(set(ids) - (sent | committed))}"


def auth(address):
    # The test runs a broker with --auth and TLS where py-app may publish to and consume
    # py-secured as py-readers (its secret in the environment; the broker's CA in
    # GRPC_DEFAULT_SSL_ROOTS_FILE_PATH); the Python client signs with its own format.
    import os
    topic, group = "py-secured", "py-readers"
    secret = os.environ["PY_APP_SECRET"]
    signed = ClientConfiguration(address, Credentials("py-app", secret), request_timeout=5)
    producer = Producer(signed, (topic,), tls_enable=True)
    producer.startup()
    m = Message()
    m.topic = topic
    m.body = b"signed by python"
    producer.send(m)
    producer.shutdown()
    consumer = SimpleConsumer(signed, group, {topic: FilterExpression()}, await_duration=2, tls_enable=True)
    consumer.startup()
    got = drain(consumer, 1)
    consumer.shutdown()
    assert [x.body for x in got] == [b"signed by python"], got
    # A wrong secret: refused with UNAUTHORIZED.
    wrong = ClientConfiguration(address, Credentials("py-app", "not-the-secret"), request_timeout=5)
    bad = Producer(wrong, (topic,), tls_enable=True)
    try:
        bad.startup()
        m2 = Message()
        m2.topic = topic
        m2.body = b"x"
        bad.send(m2)
        raise AssertionError("a wrong secret was accepted")
    except AssertionError:
        raise
    except Exception as e:
        # The client reports the refused route query (UNAUTHORIZED) as a failed route fetch.
        text = str(e).upper()
        assert "40100" in text or "UNAUTHORIZED" in text or "ROUTE" in text, f"unexpected error: {e!r}"


if __name__ == "__main__":
    address, scenario = sys.argv[1], sys.argv[2]
    scenarios = {"sql92": sql92, "gzip": gzip_body, "recall": recall, "priority": priority, "lite": lite,
                 "cluster": cluster, "auth": auth}
    scenarios[scenario](address)
    print("ok")
