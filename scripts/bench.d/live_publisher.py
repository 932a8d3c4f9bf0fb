#!/usr/bin/env python3
"""Live telemetry for the latency phase of scripts/bench, at up to about 200,000
messages/s from one core: MQTT 3.1.1 spoken over a plain socket, QoS 1 (the broker's
PUBACKs are read and counted by a second thread) or 0, one message per machine in turn,
timestamped to the millisecond when its batch is built.

Why not `fleetagg simulate`: its paho client (each publish awaited through a token) is
far dearer; on a 2-core machine two of them publishing 100,000 machines at 1 message/s
took 60 % of a core each, left the service and Mosquitto too little CPU, and the broker
queued what the service could not take: a backlog, not live traffic (docs/benchmarks.md,
session 15). The payloads are the
same as `simulate`'s: {"machine", "ts" (ms), "load_rate", "mileage"}.

Prints "published N messages from M machines in S s (R messages/s)" as `simulate` does.
"""

import argparse
import datetime
import random
import socket
import struct
import sys
import threading
import time

BATCH = 2_000
PACKET_IDS = [struct.pack("!H", n) for n in range(65536)]


def encode_length(length):
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


# Every remaining length a publish here can have (topic and payload stay far below).
LENGTHS = [encode_length(n) for n in range(1 << 14)]


def utf8(text):
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect(host, port, client_id):
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Protocol "MQTT" level 4, clean session, keep-alive 0 (no pings needed).
    body = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + utf8(client_id)
    sock.sendall(b"\x10" + encode_length(len(body)) + body)
    connack = sock.recv(4)
    if len(connack) != 4 or connack[0] != 0x20 or connack[3] != 0:
        raise SystemExit(f"CONNECT refused: {connack!r}")
    return sock


class Acks(threading.Thread):
    """Counts PUBACKs (4 bytes each, the only packets the broker sends here)."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock = sock
        self.bytes = 0

    def run(self):
        while True:
            # Reading in bulk: a recv per PUBACK cost a second of system time per 100,000.
            time.sleep(0.005)
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            self.bytes += len(data)

    @property
    def count(self):
        return self.bytes // 4


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--topic-prefix", default="machines")
    parser.add_argument("--machine-prefix", default="machine-")
    parser.add_argument("--machines", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="messages/s over the fleet")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1,
                        help="0 spares the broker the PUBACKs both ways (it delivers at QoS 0)")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    ids = [f"{args.machine_prefix}{n:04}" for n in range(1, args.machines + 1)]
    topics = [utf8(f"{args.topic_prefix}/{machine}/telemetry") for machine in ids]
    # What differs between messages is pre-formatted where it can be: CPython spends
    # microseconds on float formatting, and this script must stay well below the service.
    heads = [f'{{"machine":"{machine}","ts":"'.encode() for machine in ids]
    loads = [f'","load_rate":{rng.uniform(0, 100):.2f},"mileage":'.encode() for _ in range(4096)]
    mileage = [int(rng.uniform(0, 50_000_000)) for _ in ids]

    sock = connect(args.host, args.port, f"fleetagg-live-{args.machine_prefix}{args.seed}")
    acks = Acks(sock)
    acks.start()
    total = int(args.rate * args.seconds)
    sent = 0
    packet_id = 0
    started = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - started) * args.rate) + 1)
        # Messages go out in batches of at least 2 ms' worth (or what is left): one
        # sendall and one timestamp per batch, not per message.
        if due - sent < min(total - sent, max(1, args.rate / 500)):
            time.sleep(0.001)
            continue
        now = datetime.datetime.now(datetime.timezone.utc)
        stamp = (now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z").encode()
        parts = []
        for _ in range(min(due - sent, BATCH)):
            index = sent % args.machines
            mileage[index] += 250  # in thousandths: it only grows
            payload = b"".join((heads[index], stamp, loads[sent & 4095],
                                b"%d.%03d}" % divmod(mileage[index], 1000)))
            # Ids are reused without waiting for their PUBACK: Mosquitto acknowledges an
            # incoming QoS 1 publish at once and keeps no state by id for it.
            packet_id = packet_id % 65535 + 1
            topic = topics[index]
            if args.qos:
                parts += (b"\x32", LENGTHS[len(topic) + 2 + len(payload)], topic, PACKET_IDS[packet_id], payload)
            else:
                parts += (b"\x30", LENGTHS[len(topic) + len(payload)], topic, payload)
            sent += 1
        sock.sendall(b"".join(parts))
    elapsed = time.monotonic() - started
    expected = sent if args.qos else 0
    deadline = time.monotonic() + 60
    while acks.count < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    if acks.count < expected:
        raise SystemExit(f"only {acks.count} of {sent} publishes acknowledged")
    sock.sendall(b"\xe0\x00")
    sock.close()
    print(f"published {sent} messages from {args.machines} machines in {elapsed:.2f}s "
          f"({sent / elapsed:.0f} messages/s)")


if __name__ == "__main__":
    sys.exit(main())
