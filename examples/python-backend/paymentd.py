#!/usr/bin/python3
"""A reference edgebridge backend in Python: paymentd's business rule
(approve amounts up to a limit, decline above it) behind the
edgebridge.v1.Delivery stream, written from the .proto and docs/BACKEND.md
alone, with Debian's python3-grpcio (no pip).

Dedup is durable: every final result is appended to a JSON-lines ledger
and fsynced before its Ack leaves, and the ledger is reloaded at start, so
a redelivery after a crash is answered with the stored result instead of
being processed again. One process, one ledger file: replicas would share
a database with message_id as a unique key instead (see BACKEND.md).

    /usr/bin/python3 examples/python-backend/paymentd.py -listen 127.0.0.1:7070 -ledger ledger.jsonl

Regenerate the stubs in gen/ with ./scripts/genproto.sh.
"""

import argparse
import hashlib
import json
import os
import queue
import signal
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf.message import DecodeError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
from edgebridge.v1 import edgebridge_pb2 as pb  # noqa: E402
from edgebridge.v1 import edgebridge_pb2_grpc as pb_grpc  # noqa: E402

CONTENT_TYPE = "application/x-protobuf; messageType=edgebridge.v1.PaymentRequest"
MAX_WINDOW = 65536
MAX_ID_LEN = 128
DECLINE_REASON = "amount exceeds limit"


def message_id(device_id, request_id):
    """The contract's MessageID: first 16 bytes of SHA-256(device, 0x00, request), hex."""
    h = hashlib.sha256(device_id.encode() + b"\x00" + request_id.encode())
    return h.hexdigest()[:32]


class Ledger:
    """Final results by message id, on disk. save() buffers; sync() writes
    and fsyncs. Callers hold the backend's lock."""

    def __init__(self, path):
        self.seen = {}
        good = 0
        if os.path.exists(path):
            with open(path, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # a torn last line from a crash: dropped
                    entry = json.loads(line)
                    self.seen[entry["message_id"]] = entry
                    good += len(line)
        self.f = open(path, "ab")
        self.f.truncate(good)
        self.buf = []

    def lookup(self, mid):
        return self.seen.get(mid)

    def save(self, entry):
        self.seen[entry["message_id"]] = entry
        self.buf.append(json.dumps(entry, separators=(",", ":")).encode() + b"\n")

    def sync(self):
        if self.buf:
            self.f.write(b"".join(self.buf))
            self.buf = []
            self.f.flush()
            os.fsync(self.f.fileno())


def ack_from_entry(seq, entry, duplicate):
    """The Ack of a stored result: a business answer as a typed reply (the
    bridge renders the device's JSON), a REJECT with its code."""
    a = pb.Ack(seq=seq, message_id=entry["message_id"], duplicate=duplicate)
    if entry["status"] == "REJECTED":
        a.outcome = pb.OUTCOME_REJECT
        a.code = pb.ReasonCode.Value("REASON_CODE_" + entry["code"].upper())
        a.reason = entry.get("reason", "")
        return a
    a.outcome = pb.OUTCOME_OK
    if entry["status"] == "DECLINED":
        a.reply.status = pb.PAYMENT_STATUS_DECLINED
        a.reply.code = pb.REASON_CODE_LIMIT_EXCEEDED
        a.reply.reason = DECLINE_REASON
    else:
        a.reply.status = pb.PAYMENT_STATUS_APPROVED
    return a


class Delivery(pb_grpc.DeliveryServicer):
    def __init__(self, ledger, limit):
        self.ledger = ledger
        self.limit = limit
        self.lock = threading.Lock()  # lookup, decide, save: one step

    def process(self, d):
        env = d.envelope
        if not env.device_id or not env.request_id or len(env.device_id) > MAX_ID_LEN or len(env.request_id) > MAX_ID_LEN \
                or env.message_id != message_id(env.device_id, env.request_id):
            # Nothing in it is trusted: not processed, not stored.
            return pb.Ack(seq=d.seq, message_id=env.message_id, outcome=pb.OUTCOME_REJECT,
                          code=pb.REASON_CODE_INVALID_REQUEST, reason="envelope breaks the contract")
        stored = self.ledger.lookup(env.message_id)
        if stored is not None:
            if stored.get("fingerprint") and env.fingerprint and stored["fingerprint"] != env.fingerprint:
                return pb.Ack(seq=d.seq, message_id=env.message_id, outcome=pb.OUTCOME_REJECT,
                              code=pb.REASON_CODE_CONFLICT, reason="message id already used for different content")
            return ack_from_entry(d.seq, stored, duplicate=True)
        if env.content_type != CONTENT_TYPE:
            return pb.Ack(seq=d.seq, message_id=env.message_id, outcome=pb.OUTCOME_REJECT,
                          code=pb.REASON_CODE_UNSUPPORTED, reason="content type not supported")
        req = pb.PaymentRequest()
        try:
            req.ParseFromString(env.payload)
        except DecodeError:
            return pb.Ack(seq=d.seq, message_id=env.message_id, outcome=pb.OUTCOME_REJECT,
                          code=pb.REASON_CODE_INVALID_REQUEST, reason="payload is not a PaymentRequest")
        entry = {"message_id": env.message_id, "device_id": env.device_id, "request_id": env.request_id,
                 "amount_minor": req.amount_minor, "currency": req.currency,
                 "status": "APPROVED" if req.amount_minor <= self.limit else "DECLINED",
                 "fingerprint": env.fingerprint}
        self.ledger.save(entry)
        return ack_from_entry(d.seq, entry, duplicate=False)

    def Stream(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("frame") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first frame must be hello")
        window = min(max(first.hello.window, 1), MAX_WINDOW)
        # credits unset: the bridge's window.
        yield pb.ServerFrame(welcome=pb.Welcome(backend_id="python-paymentd"))

        out = queue.Queue()  # frames to send; None ends the stream
        work = queue.Queue()  # deliveries to process; None: no more
        inflight = [0]  # received, not yet ACKed
        inflight_lock = threading.Lock()

        def receive():
            # Pongs come from here, not the processor: a slow store shows
            # as load, not as a dead stream.
            try:
                for f in request_iterator:
                    kind = f.WhichOneof("frame")
                    if kind == "ping":
                        with inflight_lock:
                            load = min(100, 100 * inflight[0] // window)
                        out.put(pb.ServerFrame(pong=pb.Pong(seq=f.ping.seq, ping_sent_unix_nano=f.ping.sent_unix_nano,
                                                            load_percent=load)))
                    elif kind == "deliver":
                        with inflight_lock:
                            inflight[0] += 1
                            over = inflight[0] > window
                        if over:
                            break  # the bridge broke the protocol: end the stream
                        work.put(f.deliver)
            except grpc.RpcError:
                pass  # the stream ended
            finally:
                work.put(None)

        def process():
            while True:
                d = work.get()
                if d is None:
                    break
                batch = [d]
                while len(batch) < 256:
                    try:
                        d = work.get_nowait()
                    except queue.Empty:
                        break
                    if d is None:
                        work.put(None)
                        break
                    batch.append(d)
                with self.lock:
                    acks = [self.process(x) for x in batch]
                    try:
                        self.ledger.sync()  # durable before any of these Acks leaves
                    except OSError as e:
                        print("paymentd: ledger sync failed:", e, file=sys.stderr)
                        break
                with inflight_lock:
                    inflight[0] -= len(acks)
                for a in acks:
                    out.put(pb.ServerFrame(ack=a))
            out.put(None)

        threading.Thread(target=receive, daemon=True).start()
        threading.Thread(target=process, daemon=True).start()
        while True:
            f = out.get()
            if f is None:
                return
            yield f


def health_check(request, context):
    # grpc.health.v1.Health/Check without the grpcio-health-checking
    # package: HealthCheckResponse{status: SERVING} is the two bytes 08 01.
    return b"\x08\x01"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-listen", default="127.0.0.1:7070")
    p.add_argument("-ledger", default="paymentd-ledger.jsonl")
    p.add_argument("-limit", type=int, default=100000, help="approve amounts up to this many minor units")
    args = p.parse_args()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=[
        # The bridge pings every 20s of silence, never more often than every
        # 10s, also between calls: allow it, or the connection is closed.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10000),
        ("grpc.http2.max_ping_strikes", 0),
    ])
    pb_grpc.add_DeliveryServicer_to_server(Delivery(Ledger(args.ledger), args.limit), server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(health_check, request_deserializer=bytes, response_serializer=bytes),
    }),))
    if server.add_insecure_port(args.listen) == 0:
        sys.exit("paymentd: cannot listen on " + args.listen)
    server.start()
    print("paymentd (python): listening on", args.listen, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
