#!/usr/bin/env python3
"""A raw mutual-TLS client that sends smtpsync frames, well-formed or not.

Connects to a node's mTLS port (replication and admin) with a client
certificate, sends what the scenario says, and reports in one line on
stdout how the node answered:

    result=reply body=<name> [code=N] [message=...]   a frame came back
    result=closed [error=N message=...]                 the node closed the
                                                        connection (after an
                                                        Error farewell frame,
                                                        shown, if it sent one)
    result=refused reason=...                           the TLS handshake or
                                                        the first read failed
                                                        with a TLS alert
    result=open                                         nothing came back and
                                                        the connection stayed
                                                        open for --timeout s

Scenarios (the 4-octet big-endian length header, then a packed Frame):

    status       a valid StatusQuery (positive control)
    oversized    a header announcing 0x7fffffff octets, then 64 KiB of them
    truncated    a header announcing 100 octets, 10 of them, then close
    garbage      4 KiB of random octets inside TLS
    garbage-tls  4 KiB of random octets instead of a TLS ClientHello
    undecodable  a correct header and a body that is not protobuf
    nobody       a Frame with an id and no body (nothing to act on)
    empty        a header announcing 0 octets
    hello        a Hello (--epoch, --revision, --node, --cluster), as a
                 member pushing would start
    silent       the handshake, then nothing (the idle timeout)
    silent-tcp   a TCP connection that never starts TLS (the handshake
                 timeout); reports after how long the node closed it

Exit status: 0 when a result was observed, 2 on a usage error or when the
TCP connection could not be made. Python standard library only.
"""
import argparse
import os
import socket
import ssl
import struct
import sys
import time

FRAME_BODIES = {
    10: "hello", 11: "state", 12: "delta", 13: "snapshot", 14: "ack", 15: "diverged",
    16: "fenced", 17: "status_query", 18: "status_reply", 19: "run_test",
    20: "test_result", 21: "error", 54: "admin_reply",
}


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, value):
    return varint(num << 3) + varint(value)


def field_bytes(num, data):
    return varint((num << 3) | 2) + varint(len(data)) + data


def framed(body):
    return struct.pack(">I", len(body)) + body


def parse(data):
    """Fields of a protobuf message: {number: [value, ...]} (bytes or int)."""
    fields = {}
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(data, i)
        elif wt == 2:
            n, i = read_varint(data, i)
            v = data[i:i + n]
            i += n
        elif wt == 1:
            v = data[i:i + 8]
            i += 8
        elif wt == 5:
            v = data[i:i + 4]
            i += 4
        else:
            raise ValueError("wire type %d" % wt)
        fields.setdefault(num, []).append(v)
    return fields


def read_varint(data, i):
    n = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def signed32(n):
    n &= 0xFFFFFFFF
    return n - (1 << 32) if n & 0x80000000 else n


def describe(frame):
    """One line for a received Frame."""
    try:
        f = parse(frame)
    except ValueError as e:
        return "body=undecodable (%s)" % e
    body = [n for n in f if n != 1]
    if not body:
        return "body=none"
    num = body[0]
    name = FRAME_BODIES.get(num, "field%d" % num)
    text = "body=%s" % name
    if num in (21, 54):  # Error{code, message}, AdminReply{code, error}
        try:
            m = parse(f[num][0])
        except ValueError:
            return text
        code = signed32(m.get(1, [0])[0])
        msg = m.get(2, [b""])[0].decode("utf-8", "replace")
        text += " code=%d message=%s" % (code, msg)
    return text


def payload(args):
    sc = args.scenario
    if sc == "status":
        return framed(field_varint(1, 1) + field_bytes(17, b""))
    if sc == "oversized":
        return struct.pack(">I", 0x7FFFFFFF) + b"\0" * 65536
    if sc == "truncated":
        return struct.pack(">I", 100) + b"\x08\x01" + b"\0" * 8
    if sc == "garbage":
        return os.urandom(4096)
    if sc == "undecodable":
        return framed(b"\xff\xff\xff\xff\xff\xff\xff\xff\x0f\x07")
    if sc == "nobody":
        return framed(field_varint(1, 7))
    if sc == "empty":
        return struct.pack(">I", 0)
    if sc == "hello":
        hello = (field_bytes(1, args.cluster.encode()) + field_bytes(2, args.node.encode()) +
                 field_varint(3, args.epoch) + field_varint(4, args.revision) +
                 field_bytes(5, b"\0" * 32) + field_bytes(6, b"raw_frame"))
        return framed(field_varint(1, 1) + field_bytes(10, hello))
    if sc == "silent":
        return b""
    raise SystemExit("raw_frame: unknown scenario %s" % sc)


def read_frame(s, deadline):
    """A whole frame, or None when the peer closed first; raises on TLS errors."""
    buf = b""
    while True:
        if len(buf) >= 4:
            n = struct.unpack(">I", buf[:4])[0]
            if len(buf) >= 4 + n:
                return buf[4:4 + n]
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        s.settimeout(left)
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--node", default="primary")
    ap.add_argument("--cluster", default="")
    ap.add_argument("--epoch", type=int, default=1)
    ap.add_argument("--revision", type=int, default=0)
    args = ap.parse_args()

    try:
        raw = socket.create_connection((args.host, args.port), timeout=args.timeout)
    except OSError as e:
        print("raw_frame: cannot connect to %s:%d: %s" % (args.host, args.port, e),
              file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.timeout

    if args.scenario == "silent-tcp":
        start = time.monotonic()
        raw.settimeout(args.timeout)
        try:
            data = raw.recv(65536)
            while data:
                data = raw.recv(65536)
            print("result=closed after=%.1fs" % (time.monotonic() - start))
        except socket.timeout:
            print("result=open")
        except OSError as e:
            print("result=closed after=%.1fs reason=%s" % (time.monotonic() - start, e))
        raw.close()
        return 0

    if args.scenario == "garbage-tls":
        try:
            raw.sendall(os.urandom(4096))
            raw.settimeout(args.timeout)
            data = raw.recv(65536)
            while data:
                data = raw.recv(65536)
            print("result=closed")
        except socket.timeout:
            print("result=open")
        except OSError as e:
            print("result=closed reason=%s" % e)
        raw.close()
        return 0

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.check_hostname = False
    try:
        s = ctx.wrap_socket(raw, server_hostname=args.host)
    except (ssl.SSLError, OSError) as e:
        print("result=refused reason=%s" % e)
        return 0

    try:
        data = payload(args)
        if data:
            s.sendall(data)
        if args.scenario == "truncated":
            # The peer sees the end of the stream in the middle of a frame.
            try:
                s.unwrap()
            except (ssl.SSLError, OSError):
                pass
            print("result=closed")
            return 0
        got = read_frame(s, deadline)
        if got is None:
            print("result=closed")
            return 0
        line = describe(got)
        if line.startswith("body=error"):
            # A farewell: the connection must close after it.
            rest = line[len("body=error "):]
            try:
                after = read_frame(s, time.monotonic() + args.timeout)
                print("result=closed error %s%s" % (
                    rest, "" if after is None else " (then %s)" % describe(after)))
            except TimeoutError:
                print("result=reply %s (connection left open)" % line)
            return 0
        print("result=reply %s" % line)
    except TimeoutError:
        print("result=open")
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
        print("result=closed")
    except ssl.SSLError as e:
        print("result=refused reason=%s" % e)
    except (ConnectionResetError, BrokenPipeError) as e:
        print("result=closed reason=%s" % e)
    finally:
        try:
            s.close()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
