#!/usr/bin/env python3
"""Number crunching for tests/bench/run.

  report.py drain LOG T0_MS N
      Messages per second from T0_MS (wall clock, ms since the epoch, taken
      just before the sink was let go) to the last `delivered` line of the
      daemon's LOG. Prints "rate=R seconds=S delivered=D other=O" where
      `other` counts deferred and dead outcomes (should be 0).

  report.py latency TRACE LOG
      Enqueue-to-250 latency per message: TRACE holds "ID CALL_MS" lines
      from bench_submit --trace (when submit_call() was entered); the
      daemon's log has "TIME info delivered id=ID ... queued_ms=Q" written
      when the server's 250 to the end of data was read. Log times are
      truncated to the millisecond, so half a millisecond is added to each.
      Prints "n=N e2e_p50=.. e2e_p99=.. e2e_max=.. queued_p50=.. queued_p99=..
      during=.. after=..": the last two are the messages delivered per second
      while submissions were still being accepted, and after the last one
      (nan unless at least 100 were left to deliver then).

  report.py hyperfine JSON
      Prints "mean_ms=.. stddev_ms=.. median_ms=.. rate=.." of the first
      result of a hyperfine --export-json file.

  report.py table RESULTS [--markdown]
      Renders the records bench/run appended to RESULTS (one per line,
      key=value pairs) as text tables, or Markdown for docs/BENCHMARKS.md.
"""
import datetime
import json
import re
import statistics
import sys

DELIVERED = re.compile(r"^(\S+) info delivered id=(\d+) .*queued_ms=(-?\d+)")
ACCEPTED = re.compile(r"^(\S+) info submission accepted id=")
OTHER = re.compile(r"^\S+ (?:info|warn) (?:deferred|dead) id=")


def log_ms(stamp):
    t = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000 + 0.5


def pct(values, p):
    """Nearest-rank percentile of a sorted list."""
    if not values:
        return float("nan")
    rank = max(1, -(-len(values) * p // 100))
    return values[int(min(rank, len(values))) - 1]


def cmd_drain(log, t0_ms, n):
    last, delivered, other = None, 0, 0
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = DELIVERED.match(line)
            if m:
                delivered += 1
                last = log_ms(m.group(1))
            elif OTHER.match(line):
                other += 1
    if last is None or delivered < int(n):
        print(f"rate=0 seconds=0 delivered={delivered} other={other}")
        return
    seconds = (last - float(t0_ms)) / 1000
    print(f"rate={int(n) / seconds:.0f} seconds={seconds:.3f} delivered={delivered} other={other}")


def cmd_latency(trace, log):
    called = {}
    with open(trace) as f:
        for line in f:
            ident, ms = line.split()
            called[ident] = float(ms)
    e2e, queued, accepted, delivered = [], [], [], []
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = DELIVERED.match(line)
            if m and m.group(2) in called:
                delivered.append(log_ms(m.group(1)))
                e2e.append(delivered[-1] - called[m.group(2)])
                queued.append(int(m.group(3)))
            elif ACCEPTED.match(line):
                accepted.append(log_ms(line.split()[0]))
    e2e.sort()
    queued.sort()
    during = after = float("nan")
    if accepted and delivered:
        first, last = min(accepted), max(accepted)
        n = sum(1 for t in delivered if t <= last)
        if last > first:
            during = n / (last - first) * 1000
        if len(delivered) - n >= 100:  # a backlog worth timing
            after = (len(delivered) - n) / (max(delivered) - last) * 1000
    print(f"n={len(e2e)} e2e_p50={pct(e2e, 50):.1f} e2e_p99={pct(e2e, 99):.1f} "
          f"e2e_max={e2e[-1] if e2e else float('nan'):.1f} "
          f"queued_p50={pct(queued, 50)} queued_p99={pct(queued, 99)} "
          f"during={during:.0f} after={after:.0f}")


def cmd_hyperfine(path):
    with open(path) as f:
        r = json.load(f)["results"][0]
    mean = r["mean"] * 1000
    print(f"mean_ms={mean:.2f} stddev_ms={r['stddev'] * 1000:.2f} "
          f"median_ms={r['median'] * 1000:.2f} rate={1000 / mean:.1f}")


# ---- tables ----

def load(path):
    records = []
    with open(path) as f:
        for line in f:
            if line.strip():
                records.append(dict(kv.split("=", 1) for kv in line.split()))
    return records


def select(records, **want):
    return [r for r in records if all(r.get(k) == v for k, v in want.items())]


def spread(values):
    """'median (min–max)' of a list of numbers as text, or '–'."""
    values = sorted(float(v) for v in values)
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.0f}"
    return f"{med:,.0f} ({values[0]:,.0f}–{values[-1]:,.0f})"


def median(values):
    values = [float(v) for v in values]
    return statistics.median(values) if values else float("nan")


class Table:
    def __init__(self, title, header):
        self.title, self.header, self.rows = title, header, []

    def add(self, *cells):
        self.rows.append([str(c) for c in cells])

    def empty(self):
        return all(c in ("–", "nan") for row in self.rows for c in row[1:])

    def render(self, markdown):
        out = []
        if markdown:
            out.append(f"**{self.title}**\n")
            out.append("| " + " | ".join(self.header) + " |")
            out.append("|" + "|".join("---" for _ in self.header) + "|")
            for row in self.rows:
                out.append("| " + " | ".join(row) + " |")
        else:
            widths = [max(len(r[i]) for r in [self.header] + self.rows)
                      for i in range(len(self.header))]
            out.append(self.title)
            for row in [self.header] + self.rows:
                out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        return "\n".join(out) + "\n"


def cmd_table(path, markdown):
    recs = load(path)
    reps = max([len(select(recs, kind="drain", mode="plain", sessions="1"))] + [1])
    tables = []

    t = Table(f"Throughput to smtp-sink, msg/s: median of {reps} runs (min–max)",
              ["client", "plaintext, 1 session", "plaintext, 8 sessions",
               "TLS, 1 session", "TLS, 8 sessions"])

    def cells(kind, **extra):
        return [spread(r["rate"] for r in select(recs, kind=kind, mode=m, sessions=s, **extra))
                for m in ("plain", "tls") for s in ("1", "8")]

    t.add("smtpsync (outbox drain)", *cells("drain"))
    t.add("smtp-source -d (one connection per session)", *cells("source", reuse="yes"))
    t.add("smtp-source (one connection per message)", *cells("source", reuse="no"))
    row = []
    for m in ("plain", "tls"):
        r = select(recs, kind="permsg", tool="msmtp", mode=m)
        row += [f"{median(x['rate'] for x in r):,.0f}" if r else "–", "–"]
    t.add("msmtp, one process per message", *row)
    tables.append(t)

    t = Table("Client CPU per message, µs (user + system, median): smtpsync-primary during "
              "the drain, smtp-source for its whole run", ["client", "plaintext, 1 session",
                                                           "plaintext, 8 sessions",
                                                           "TLS, 1 session", "TLS, 8 sessions"])

    def cpu(kind, **extra):
        out = []
        for m in ("plain", "tls"):
            for sess in ("1", "8"):
                v = [r["cpu_us"] for r in select(recs, kind=kind, mode=m, sessions=sess, **extra)
                     if "cpu_us" in r]
                out.append(f"{median(v):.1f}" if v else "–")
        return out

    t.add("smtpsync-primary", *cpu("drain"))
    t.add("smtp-source -d", *cpu("source", reuse="yes"))
    t.add("smtp-source", *cpu("source", reuse="no"))
    tables.append(t)

    t = Table("Enqueue-to-250 latency of tokencodes, ms (submit_call() entered to the sink's "
              "250; the daemon's queued_ms in brackets)",
              ["mode", "sessions", "load", "offered msg/s", "p50", "p99", "max",
               "delivered msg/s while / after submitting"])

    def rate(v):
        return "–" if v in (None, "nan") else f"{float(v):,.0f}"

    for r in select(recs, kind="latency"):
        t.add("plaintext" if r["mode"] == "plain" else "TLS", r["sessions"], r["load"],
              f"{float(r['offered']):,.0f}",
              f"{float(r['e2e_p50']):.1f} [{r['queued_p50']}]",
              f"{float(r['e2e_p99']):.1f} [{r['queued_p99']}]", f"{float(r['e2e_max']):.1f}",
              f"{rate(r.get('during'))} / {rate(r.get('after'))}")
    tables.append(t)

    t = Table("Durable submissions (reply after the outbox commit), delivery paused",
              ["submitters", "submissions/s", "p50 ms", "p99 ms"])
    for r in select(recs, kind="submit"):
        t.add(r["concurrency"], f"{float(r['rate']):,.0f}", r["p50_ms"], r["p99_ms"])
    for r in select(recs, kind="permsg", tool="smtpsyncctl-send"):
        t.add("1 (smtpsyncctl send, a process per message)", f"{float(r['rate']):,.0f}",
              f"{float(r['median_ms']):.2f} (median)", "–")
    tables.append(t)

    t = Table("Peak RSS of smtpsync-primary, MiB: VmHWM (it counts the outbox's memory-mapped "
              "LMDB pages), and the heap (RssAnon) when each run ended",
              ["runs", "VmHWM max", "VmHWM median", "RssAnon max"])
    for label, kinds in (("plaintext", ("plain",)), ("TLS", ("tls",)), ("all", ("plain", "tls"))):
        v = [int(r["rss_kb"]) for r in recs if "rss_kb" in r and r.get("mode") in kinds]
        a = [int(r["anon_kb"]) for r in select(recs, kind="anon") if r.get("mode") in kinds]
        if v:
            t.add(label, f"{max(v) / 1024:.1f}", f"{statistics.median(v) / 1024:.1f}",
                  f"{max(a) / 1024:.1f}" if a else "–")
    tables.append(t)

    goals = Table("Goals", ["goal", "measured", "result"])
    plain_ours = {s: median(r["rate"] for r in select(recs, kind="drain", mode="plain",
                                                      sessions=s)) for s in ("1", "8")}
    plain_ref = {s: median(r["rate"] for r in select(recs, kind="source", mode="plain",
                                                     sessions=s, reuse="yes"))
                 for s in ("1", "8")}
    for s in ("1", "8"):
        if plain_ours[s] == plain_ours[s] and plain_ref[s] == plain_ref[s]:  # not NaN
            goals.add(f">= smtp-source -d throughput, plaintext, {s} session(s)",
                      f"{plain_ours[s]:,.0f} vs {plain_ref[s]:,.0f} msg/s (medians)",
                      "met" if plain_ours[s] >= plain_ref[s] else "MISSED")
    tls1 = median(r["rate"] for r in select(recs, kind="drain", mode="tls", sessions="1"))
    if tls1 == tls1:
        goals.add(">= 1,000 msg/s on one reused TLS session", f"{tls1:,.0f} msg/s (median)",
                  "met" if tls1 >= 1000 else "MISSED")
    p99 = [float(r["e2e_p99"]) for r in select(recs, kind="latency", load="steady")]
    if p99:
        worst = max(p99)
        goals.add("tokencode enqueue-to-250 p99 < 20 ms (steady load, each mode and session "
                  "count)", f"worst p99 {worst:.1f} ms", "met" if worst < 20 else "MISSED")
    tables.append(goals)

    print("\n".join(t.render(markdown) for t in tables if t.rows and not t.empty()), end="")


def main(argv):
    if len(argv) >= 5 and argv[1] == "drain":
        cmd_drain(argv[2], argv[3], argv[4])
    elif len(argv) == 4 and argv[1] == "latency":
        cmd_latency(argv[2], argv[3])
    elif len(argv) == 3 and argv[1] == "hyperfine":
        cmd_hyperfine(argv[2])
    elif len(argv) in (3, 4) and argv[1] == "table":
        cmd_table(argv[2], len(argv) == 4 and argv[3] == "--markdown")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
