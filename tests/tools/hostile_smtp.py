#!/usr/bin/env python3
"""A scripted, misbehaving SMTP server for the integration tests.

    hostile_smtp.py --scenario NAME --port-file F [--cert C --key K]
                    [--deliver-dir D] [--log L] [--tls none|starttls|implicit]
                    [--fail-times N] [--port P]

Listens on 127.0.0.1 (port P, default: one the kernel picks), writes the
port to F (atomically: the file appears complete) and prints it on stdout,
then serves until SIGTERM or SIGINT. Only the Python standard library.

Apart from what its scenario breaks, it is a plain SMTP server: EHLO (with
PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, STARTTLS where the TLS mode
offers it, and AUTH PLAIN LOGIN once the session is encrypted, or at once
with --tls none), HELO, AUTH (any credentials), MAIL, RCPT, DATA, RSET,
NOOP, QUIT. Accepted messages go into --deliver-dir as N.eml (the data as
received, dot-unstuffed, CRLF kept) with N.env (MAIL FROM and RCPT TO
lines), each file complete when it appears. --log records the dialogue:
one line per command and reply, "C: " and "S: " prefixed, and "-- " notes
(connections, TLS, closes); AUTH payloads are not recorded.

Scenarios (default TLS mode in brackets):

  starttls-not-offered  [none]      EHLO has no STARTTLS (AUTH offered in clear)
  starttls-454          [starttls]  STARTTLS -> 454 4.7.0
  starttls-injection    [starttls]  STARTTLS -> "220 ready\\r\\n250-injected\\r\\n"
                                    in one write, then a TLS handshake
  wrong-hostname-cert   [implicit]  serve --cert (the test picks a certificate
  other-ca-cert         [implicit]  for another name, from another CA, or
  expired-cert          [implicit]  expired: the server side is the same)
  tls10-only            [implicit]  TLS 1.0 only, any cipher (@SECLEVEL=0)
  auth-fail             [implicit]  AUTH -> 535 5.7.8
  421-mid-session       [none]      MAIL -> 421 4.3.2, then close
  slow-greeting         [none]      accept, never greet
  endless-multiline     [none]      EHLO -> "250-..." lines without end
  oversized-line        [none]      a 4,000-octet greeting line
  tempfail-then-ok      [none]      RCPT -> 451 4.3.0 the first --fail-times
                                    (1) times, over all connections (a
                                    client may retry on the session it
                                    kept open), then accept and deliver
  permfail              [none]      RCPT -> 550 5.1.1
  close-after-data      [none]      read the message, close without
                                    answering the final dot
  ok                    [none]      no misbehaviour (a reference server)

TLS modes other than none need --cert and --key (PEM; --cert may hold the
chain). Implicit TLS is served over memory BIOs (TLSStream), not asyncio's
ssl transport: that one drops the alert of a failed handshake (a
TLS-1.0-only server's protocol_version) and just closes, which no real
server does.
"""

import argparse
import asyncio
import base64
import os
import signal
import ssl
import sys
import tempfile
import warnings

SCENARIOS = {
    "starttls-not-offered": "none",
    "starttls-454": "starttls",
    "starttls-injection": "starttls",
    "wrong-hostname-cert": "implicit",
    "other-ca-cert": "implicit",
    "expired-cert": "implicit",
    "tls10-only": "implicit",
    "auth-fail": "implicit",
    "421-mid-session": "none",
    "slow-greeting": "none",
    "endless-multiline": "none",
    "oversized-line": "none",
    "tempfail-then-ok": "none",
    "permfail": "none",
    "close-after-data": "none",
    "ok": "none",
}

# TLS 1.0 is deprecated: serving it is the point of tls10-only.
warnings.filterwarnings("ignore", category=DeprecationWarning)

HOSTNAME = "hostile.test"
LINE_MAX = 1 << 20


class Closed(Exception):
    """The session is over (client gone, or the scenario closed it)."""


class TLSStream:
    """Server-side TLS over an asyncio stream pair, through memory BIOs, as
    the reader and the writer of a session (readline, read, write, drain,
    get_extra_info, close). Unlike asyncio's ssl transport, a failed
    handshake sends its alert before the connection closes."""

    def __init__(self, reader, writer, ctx):
        self.raw_reader = reader
        self.raw_writer = writer
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.buf = bytearray()
        self.eof = False

    async def _flush(self):
        data = self.outgoing.read()
        if data:
            self.raw_writer.write(data)
            await self.raw_writer.drain()

    async def _fill(self):
        data = await self.raw_reader.read(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    async def handshake(self):
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except ssl.SSLError:
                await self._flush()  # the alert, as a real server sends it
                raise
            await self._flush()
            return

    async def _more(self):
        """Decrypts at least one more octet into buf; False at the end."""
        while not self.eof:
            try:
                data = self.obj.read(65536)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except ssl.SSLZeroReturnError:
                data = b""
            except ssl.SSLEOFError:
                data = b""
            await self._flush()
            if not data:
                self.eof = True
                return False
            self.buf += data
            return True
        return False

    async def readline(self):
        while b"\n" not in self.buf:
            if len(self.buf) > LINE_MAX:
                raise asyncio.LimitOverrunError("line too long", len(self.buf))
            if not await self._more():
                break
        i = self.buf.find(b"\n")
        n = i + 1 if i >= 0 else len(self.buf)
        line = bytes(self.buf[:n])
        del self.buf[:n]
        return line

    async def read(self, n=-1):
        if not self.buf:
            await self._more()
        n = len(self.buf) if n < 0 else min(n, len(self.buf))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def write(self, data):
        self.obj.write(data)

    async def drain(self):
        await self._flush()

    def get_extra_info(self, name, default=None):
        if name == "ssl_object":
            return self.obj
        return self.raw_writer.get_extra_info(name, default)

    async def start_tls(self, ctx):
        raise Closed("STARTTLS inside implicit TLS")

    def close(self):
        self.raw_writer.close()


class Server:
    def __init__(self, args):
        self.args = args
        self.scenario = args.scenario
        self.tls_mode = args.tls or SCENARIOS[args.scenario]
        self.ctx = None
        if self.tls_mode != "none":
            if not args.cert or not args.key:
                sys.exit("hostile_smtp.py: --cert and --key are needed for TLS mode " + self.tls_mode)
            self.ctx = self.make_context()
        self.connections = 0
        self.rcpt_reached = 0
        self.tempfails = 0  # tempfail-then-ok: 451s given so far
        self.delivered = 0
        self.log_file = open(args.log, "a", buffering=1) if args.log else None
        if args.deliver_dir:
            os.makedirs(args.deliver_dir, exist_ok=True)

    def make_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.args.cert, self.args.key)
        if self.scenario == "tls10-only":
            ctx.set_ciphers("ALL:@SECLEVEL=0")
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1
        return ctx

    def log(self, conn, text):
        if self.log_file:
            self.log_file.write("[%d] %s\n" % (conn, text))

    # ---- one session ----

    async def handle(self, reader, writer):
        self.connections += 1
        conn = self.connections
        self.log(conn, "-- connect (tls %s)" % self.tls_mode)
        try:
            if self.tls_mode == "implicit":
                tls = TLSStream(reader, writer, self.ctx)
                await asyncio.wait_for(tls.handshake(), 10)
                self.log(conn, "-- TLS established: %s" % tls.obj.version())
                reader = writer = tls
            session = Session(self, conn, reader, writer)
            await session.run()
        except (Closed, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError,
                asyncio.TimeoutError) as e:
            self.log(conn, "-- end: %s" % (type(e).__name__ if not str(e) else e))
        except asyncio.LimitOverrunError:
            self.log(conn, "-- end: client line too long")
        finally:
            try:
                writer.close()
            except Exception:
                pass
            self.log(conn, "-- closed")

    def deliver(self, mail_from, rcpts, data):
        self.delivered += 1
        d = self.args.deliver_dir
        if not d:
            return
        n = "%06d-%d" % (self.delivered, os.getpid())
        for name, content in (
            (n + ".env", ("MAIL FROM:%s\n" % mail_from + "".join("RCPT TO:%s\n" % r for r in rcpts)).encode()),
            (n + ".eml", data),
        ):
            fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.rename(tmp, os.path.join(d, name))


class Session:
    def __init__(self, server, conn, reader, writer):
        self.server = server
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.scenario = server.scenario
        self.tls = server.tls_mode == "implicit"
        self.mail_from = None
        self.rcpts = []

    def log(self, text):
        self.server.log(self.conn, text)

    async def send(self, data):
        for line in data.decode("utf-8", "replace").split("\r\n"):
            if line:
                self.log("S: " + line[:200] + ("..." if len(line) > 200 else ""))
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, *lines):
        out = b""
        for i, line in enumerate(lines):
            code, text = line.split(" ", 1)
            sep = " " if i == len(lines) - 1 else "-"
            out += ("%s%s%s\r\n" % (code, sep, text)).encode()
        await self.send(out)

    async def readline(self):
        line = await self.reader.readline()
        if not line:
            raise Closed("client closed")
        return line

    async def run(self):
        if self.scenario == "slow-greeting":
            self.log("-- holding the greeting back")
            # Wait for the client to give up (EOF) or for the test to end.
            while await self.reader.read(4096):
                pass
            raise Closed("client closed")
        if self.scenario == "oversized-line":
            await self.send(b"220 " + b"x" * 3994 + b"\r\n")
        else:
            await self.reply("220 %s ESMTP hostile test server (%s)" % (HOSTNAME, self.scenario))
        while True:
            line = await self.readline()
            cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
            verb = cmd.split(" ", 1)[0].upper()
            self.log("C: " + (cmd if verb != "AUTH" else " ".join(cmd.split(" ")[:2])))
            handler = getattr(self, "cmd_" + verb.lower(), None)
            if handler is None:
                await self.reply("502 5.5.2 command not recognised")
            else:
                await handler(cmd)

    async def cmd_ehlo(self, cmd):
        if self.scenario == "endless-multiline":
            n = 0
            while True:
                await self.send(b"250-endless line %d\r\n" % n)
                n += 1
        caps = [HOSTNAME, "PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES"]
        if self.server.tls_mode == "starttls" and not self.tls:
            caps.append("STARTTLS")
        if self.tls or self.server.tls_mode == "none":
            caps.append("AUTH PLAIN LOGIN")
        await self.reply(*["250 " + c for c in caps])

    async def cmd_helo(self, cmd):
        await self.reply("250 " + HOSTNAME)

    async def cmd_starttls(self, cmd):
        if self.server.tls_mode != "starttls" or self.tls:
            await self.reply("502 5.5.1 STARTTLS not offered")
            return
        if self.scenario == "starttls-454":
            await self.reply("454 4.7.0 TLS not available due to local problem")
            return
        if self.scenario == "starttls-injection":
            # The plaintext a man in the middle would append to the 220: a
            # client that reads it after the handshake was fooled.
            await self.send(b"220 ready\r\n250-injected\r\n")
        else:
            await self.reply("220 2.0.0 Ready to start TLS")
        self.log("-- TLS handshake")
        await self.writer.start_tls(self.server.ctx)
        self.tls = True
        self.mail_from = None
        self.rcpts = []
        self.log("-- TLS established: %s" % self.writer.get_extra_info("ssl_object").version())

    async def cmd_auth(self, cmd):
        parts = cmd.split(" ")
        mech = parts[1].upper() if len(parts) > 1 else ""
        if mech == "PLAIN":
            if len(parts) < 3:
                await self.reply("334 ")
                await self.readline()
        elif mech == "LOGIN":
            if len(parts) < 3:
                await self.reply("334 " + base64.b64encode(b"Username:").decode())
                await self.readline()
            await self.reply("334 " + base64.b64encode(b"Password:").decode())
            await self.readline()
        else:
            await self.reply("504 5.5.4 unrecognised authentication type")
            return
        if self.scenario == "auth-fail":
            await self.reply("535 5.7.8 Error: authentication failed: authentication failure")
        else:
            await self.reply("235 2.7.0 Authentication successful")

    async def cmd_mail(self, cmd):
        if self.scenario == "421-mid-session":
            await self.reply("421 4.3.2 hostile.test shutting down")
            raise Closed("421 sent")
        self.mail_from = cmd.split(":", 1)[1].strip() if ":" in cmd else ""
        self.rcpts = []
        await self.reply("250 2.1.0 Ok")

    async def cmd_rcpt(self, cmd):
        if self.mail_from is None:
            await self.reply("503 5.5.1 Error: need MAIL command")
            return
        self.server.rcpt_reached += 1
        if self.scenario == "permfail":
            await self.reply("550 5.1.1 <%s>: Recipient address rejected: User unknown" % self.addr(cmd))
            return
        if self.scenario == "tempfail-then-ok" and self.server.tempfails < self.server.args.fail_times:
            self.server.tempfails += 1
            await self.reply("451 4.3.0 <%s>: Temporary lookup failure, try again" % self.addr(cmd))
            return
        self.rcpts.append(self.addr(cmd))
        await self.reply("250 2.1.5 Ok")

    @staticmethod
    def addr(cmd):
        a = cmd.split(":", 1)[1].strip() if ":" in cmd else ""
        a = a.split(" ", 1)[0]
        return a.strip("<>")

    async def cmd_data(self, cmd):
        if self.mail_from is None:
            await self.reply("503 5.5.1 Error: need MAIL command")
            return
        if not self.rcpts:
            await self.reply("554 5.5.1 Error: no valid recipients")
            return
        await self.reply("354 End data with <CR><LF>.<CR><LF>")
        data = bytearray()
        while True:
            line = await self.readline()
            if line in (b".\r\n", b".\n"):
                break
            if line.startswith(b"."):
                line = line[1:]
            data += line
        self.log("-- %d octets of data" % len(data))
        if self.scenario == "close-after-data":
            raise Closed("closing without answering the final dot")
        self.server.deliver(self.mail_from, self.rcpts, bytes(data))
        self.mail_from = None
        self.rcpts = []
        await self.reply("250 2.0.0 Ok: queued as H%d" % self.server.delivered)

    async def cmd_rset(self, cmd):
        self.mail_from = None
        self.rcpts = []
        await self.reply("250 2.0.0 Ok")

    async def cmd_noop(self, cmd):
        await self.reply("250 2.0.0 Ok")

    async def cmd_quit(self, cmd):
        await self.reply("221 2.0.0 Bye")
        raise Closed("QUIT")


def write_port_file(path, port):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".port")
    with os.fdopen(fd, "w") as f:
        f.write("%d\n" % port)
    os.rename(tmp, path)


async def main():
    p = argparse.ArgumentParser(description="scripted misbehaving SMTP server")
    p.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    p.add_argument("--port-file", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--tls", choices=["none", "starttls", "implicit"])
    p.add_argument("--deliver-dir")
    p.add_argument("--log")
    p.add_argument("--fail-times", type=int, default=1)
    args = p.parse_args()

    server = Server(args)
    loop = asyncio.get_running_loop()

    def quiet(loop_, context):
        # Failed handshakes are the point of several scenarios.
        exc = context.get("exception")
        server.log(0, "-- %s%s" % (context.get("message", ""), ": %s" % exc if exc else ""))

    loop.set_exception_handler(quiet)
    # Implicit TLS is done by TLSStream in handle(), not by asyncio.
    srv = await asyncio.start_server(server.handle, "127.0.0.1", args.port, limit=LINE_MAX)
    port = srv.sockets[0].getsockname()[1]
    write_port_file(args.port_file, port)
    print(port, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with srv:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
