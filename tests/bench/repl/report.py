#!/usr/bin/env python3
"""report.py: turns tests/bench/repl/run's records and the daemons' logs into
tables (text, or Markdown for docs/BENCHMARKS.md).

  report.py text RESULTS      report.py markdown RESULTS

RESULTS holds tab-separated records written by `run`:
  save LABEL N REVISION T_RETURNED T_STARTED   (bash $EPOCHREALTIME after /
      before the `settings save` command)
  log LABEL PRIMARY_LOG
  rss PHASE LABEL NODE VMRSS_KIB VMHWM_KIB
  bytes LABEL BYTES_SENT_BY_PRIMARY BYTES_RECEIVED_BY_PRIMARY
  snaplog LABEL PRIMARY_LOG REPLICA_LOG

Ack time of (replica, revision): the primary's log line
  "<ISO time with ms>Z info replica ID: in sync at revision R"
written when that replica's Ack for R arrives. Commit time of R: the
primary's debug line "revision R saved: push_on_commit=..." (the admin
API's saved hook, right after the commit, before any push) when the log has
it (BENCH_PRIMARY_LOG_LEVEL=debug), else its info line "settings revision R
(was ...)", written by the same hook once the pushes are queued.
"""
import re
import sys
from collections import defaultdict
from datetime import datetime, timezone

LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z?\s+\S+\s+(.*)$")


def ts(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def log_events(path):
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line.strip())
            if m:
                yield ts(m.group(1)), m.group(2)


def pct(values, p):
    """Nearest-rank percentile."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(1, -(-len(v) * p // 100))
    return v[int(k) - 1]


def load(path):
    recs = defaultdict(list)
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            recs[parts[0]].append(parts[1:])
    return recs


def latency_rows(recs):
    logs = {r[0]: r[1] for r in recs["log"]}
    saves = defaultdict(list)
    for label, n, rev, t, t0 in recs["save"]:
        saves[label].append((int(n), int(rev), float(t), float(t0)))
    rows = []
    for label, items in saves.items():
        if label not in logs:
            continue
        acks = defaultdict(list)
        commits = {}
        pat = re.compile(r"replica (\S+): in sync at revision (\d+)$")
        cpat = re.compile(r"^settings revision (\d+) \(was")
        # At debug level the saved hook's own first line, before any push.
        spat = re.compile(r"^revision (\d+) saved: push_on_commit")
        saved = {}
        for t, msg in log_events(logs[label]):
            m = pat.search(msg)
            if m:
                acks[int(m.group(2))].append(t)
            m = cpat.search(msg)
            if m:
                commits.setdefault(int(m.group(1)), t)
            m = spat.search(msg)
            if m:
                saved.setdefault(int(m.group(1)), t)
        if saved:
            commits = saved
        lat, com, issued, dur = [], [], [], []
        n = items[0][0]
        for _, rev, t, t0 in items:
            a = acks.get(rev, [])
            if len(a) < n:
                continue
            lat.append((max(a) - t) * 1000)
            issued.append((max(a) - t0) * 1000)
            dur.append((t - t0) * 1000)
            if rev in commits:
                com.append((max(a) - commits[rev]) * 1000)
        nan = float("nan")
        rows.append(dict(label=label, n=n, saves=len(lat), p50=pct(lat, 50), p99=pct(lat, 99),
                         max=max(lat) if lat else nan, c50=pct(com, 50), c99=pct(com, 99),
                         cmax=max(com) if com else nan, i50=pct(issued, 50), i99=pct(issued, 99),
                         d50=pct(dur, 50)))
    rows.sort(key=lambda r: r["n"])
    return rows


def snapshot_rows(recs):
    rows = []
    bytes_ = {r[0]: r[1:] for r in recs["bytes"]}
    for label, plog, rlog in recs["snaplog"]:
        conn = ack = sent = None
        records = None
        for t, msg in log_events(plog):
            if conn is None and "replica fresh: connected to" in msg:
                conn = t
            m = re.search(r"replica fresh: snapshot of revision \d+ sent \((\d+) records\)", msg)
            if m and sent is None:
                sent, records = t, int(m.group(1))
            if ack is None and "replica fresh: snapshot acknowledged" in msg:
                ack = t
        rconn = rapplied = None
        for t, msg in log_events(rlog):
            if rconn is None and "primary primary connected" in msg:
                rconn = t
            if rapplied is None and "applied the snapshot of revision" in msg:
                rapplied = t
        ms = lambda a, b: (b - a) * 1000 if a is not None and b is not None else float("nan")
        b = bytes_.get(label, ["nan", "nan"])
        rows.append(dict(label=label, records=records, conn_ack=ms(conn, ack),
                         sent_ack=ms(sent, ack), r_conn_applied=ms(rconn, rapplied),
                         tx=b[0], rx=b[1]))
    return rows


def rss_rows(recs):
    groups = defaultdict(list)
    for phase, label, node, rss, hwm in recs["rss"]:
        kind = "primary" if node == "primary" else "replica"
        groups[(label, phase, kind)].append((int(rss), int(hwm)))
    rows = []
    for (label, phase, kind), v in groups.items():
        rows.append(dict(label=label, phase=phase, kind=kind, count=len(v),
                         rss_max=max(x[0] for x in v) / 1024,
                         rss_mean=sum(x[0] for x in v) / len(v) / 1024,
                         hwm_max=max(x[1] for x in v) / 1024))
    return rows


def table(headers, rows, markdown):
    out = []
    if markdown:
        out.append("| " + " | ".join(headers) + " |")
        out.append("| " + " | ".join("---" for _ in headers) + " |")
        for r in rows:
            out.append("| " + " | ".join(str(c) for c in r) + " |")
    else:
        w = [max(len(str(x)) for x in [h] + [r[i] for r in rows]) for i, h in enumerate(headers)]
        out.append("  ".join(h.ljust(w[i]) for i, h in enumerate(headers)))
        for r in rows:
            out.append("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))
    return "\n".join(out)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("text", "markdown"):
        sys.exit(__doc__)
    md = sys.argv[1] == "markdown"
    recs = load(sys.argv[2])
    def f(x):
        if x != x:
            return "-"
        t = f"{x:.0f}"
        return "0" if t == "-0" else t

    lat = latency_rows(recs)
    if lat:
        print(table(["replicas N", "saves", "save returned -> last Ack: p50 / p99 / max ms",
                     "commit (primary log) -> last Ack: p50 / p99 / max ms",
                     "save started -> last Ack: p50 / p99 ms", "save command p50 ms"],
                    [[r["n"], r["saves"], f"{f(r['p50'])} / {f(r['p99'])} / {f(r['max'])}",
                      f"{f(r['c50'])} / {f(r['c99'])} / {f(r['cmax'])}",
                      f"{f(r['i50'])} / {f(r['i99'])}", f(r["d50"])] for r in lat], md))
        print()
    snap = snapshot_rows(recs)
    if snap:
        print(table(["store", "records", "primary: connected -> Ack ms",
                     "primary: Snapshot sent -> Ack ms", "replica: connected -> applied ms",
                     "bytes primary -> replica", "bytes replica -> primary"],
                    [[r["label"], r["records"], f(r["conn_ack"]), f(r["sent_ack"]),
                      f(r["r_conn_applied"]), r["tx"], r["rx"]] for r in snap], md))
        print()
    rss = rss_rows(recs)
    if rss:
        print(table(["run", "phase", "daemon", "processes", "VmRSS MiB (max)", "VmRSS MiB (mean)",
                     "VmHWM MiB (max)"],
                    [[r["label"], r["phase"], r["kind"], r["count"], f"{r['rss_max']:.1f}",
                      f"{r['rss_mean']:.1f}", f"{r['hwm_max']:.1f}"] for r in rss], md))


if __name__ == "__main__":
    main()
