#!/usr/bin/env python3
"""Runs a command on a new pseudo-terminal, as a person at a terminal would.

    pty_session.py RESULT.json PROMPT ANSWER [PROMPT ANSWER]... -- CMD ARGS...

The pty becomes the command's controlling terminal and its stdin, stdout
and stderr. Each ANSWER (plus a newline) is typed once PROMPT has appeared;
at every prompt the terminal's ECHO flag is recorded. Answers still pending
when the command ends are not typed. RESULT.json gets {"transcript",
"exit", "echo_at_prompt": [...], "echo_after", "timed_out"}. Every wait has
a deadline, so a command that never asks, or never ends, fails the test
instead of hanging it.
"""
import fcntl
import json
import os
import select
import signal
import sys
import termios
import time

TIMEOUT = 20.0


def main():
    result_path = sys.argv[1]
    sep = sys.argv.index("--")
    pairs = sys.argv[2:sep]
    cmd = sys.argv[sep + 1:]
    script = [(pairs[i].encode(), pairs[i + 1].encode()) for i in range(0, len(pairs), 2)]

    master, slave = os.openpty()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(master)
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            if slave > 2:
                os.close(slave)
            os.execv(cmd[0], cmd)
        finally:
            os._exit(127)

    # The parent keeps `slave` open: its termios can be read after the
    # command has ended, and reads on `master` never see EIO meanwhile.
    out = b""
    deadline = time.monotonic() + TIMEOUT
    timed_out = False
    status = None

    def reap():
        nonlocal status
        if status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                status = st
        return status is not None

    def pump(wait):
        nonlocal out
        r, _, _ = select.select([master], [], [], max(0.0, wait))
        if r:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return False
            out += chunk
        return bool(r)

    # -1: the command ended first; -2: the deadline passed.
    def read_until(marker, start):
        while out.find(marker, start) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return -2
            if reap():
                while pump(0.05):
                    pass
                return out.find(marker, start) + len(marker) if marker in out[start:] else -1
            pump(min(left, 0.2))
        return out.find(marker, start) + len(marker)

    echo_at_prompt = []
    pos = 0
    for prompt, answer in script:
        pos = read_until(prompt, pos)
        if pos == -2:
            timed_out = True
        if pos < 0:
            break
        echo_at_prompt.append(bool(termios.tcgetattr(slave)[3] & termios.ECHO))
        os.write(master, answer + b"\n")

    while not reap():
        if time.monotonic() > deadline:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        pump(0.05)
    while pump(0.05):
        pass
    echo_after = bool(termios.tcgetattr(slave)[3] & termios.ECHO)
    os.close(master)
    os.close(slave)
    with open(result_path, "w") as f:
        json.dump({
            "transcript": out.decode("utf-8", "replace"),
            "exit": os.waitstatus_to_exitcode(status),
            "echo_at_prompt": echo_at_prompt,
            "echo_after": echo_after,
            "timed_out": timed_out,
        }, f)


main()
