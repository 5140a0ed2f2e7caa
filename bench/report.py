#!/usr/bin/env python3
"""bench/report.py: the figures of bench/run.sh as markdown tables, and the curve as a PNG.

Usage: report.py RESULTS.jsonl [--header FILE] [--apf-limits FILE] [--markdown OUT.md] [--plot OUT.png]
RESULTS.jsonl holds one JSON object per measurement, written by bench/run.sh (`kind`: namespaces,
raw, pk, latency, wave, wave2). Prints the markdown; asserts nothing.
"""

import argparse
import json
import sys


def num(v, default=None):
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def fmt(v, digits=1):
    x = num(v)
    if x is None:
        return "?" if v in (None, "") else str(v)
    return f"{x:,.{digits}f}"


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def rate_name(r):
    return "unlimited" if num(r) == 0 else f"{r}/s"


def tables(rows, apf_limits):
    out = []
    pk = [r for r in rows if r["kind"] == "pk"]
    raw = {(r["n"], r["c"]): r for r in rows if r["kind"] == "raw"}
    ns = {r["n"]: r for r in rows if r["kind"] == "namespaces"}

    out.append("### First pass against the raw writer (same identity's rights, same concurrency)")
    out.append("")
    out.append("| namespaces | concurrency | write rate | pullkeeper first pass, s (useful writes/s) | raw writer, s (writes/s) | "
               "throughput ratio (raw s / pullkeeper s) | pullkeeper writes until in place (settled) | "
               "raw writes | max in flight pullkeeper: executing / waiting | raw: executing / waiting |")
    out.append("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in pk:
        w = raw.get((r["n"], r["c"]), {})
        p, q = num(r.get("pass_s")), num(w.get("pass_s"))
        ratio = f"**{q / p:.2f}×**" if p and q and num(r["rate"]) == 0 else "–"
        res = "" if r.get("result") == "done" else f" ({r.get('result')}, {r.get('in_place')}/{r['n']})"
        rres = "" if not w or w.get("result") == "done" else f" ({w.get('result')})"
        useful = 2 * int(r["n"])  # one Secret and one ServiceAccount patch per namespace

        def rate(t):
            return f" ({useful / t:,.0f}/s)" if t else ""

        out.append(
            f"| {int(r['n']):,} | {r['c']} | {rate_name(r['rate'])} | {fmt(r.get('pass_s'))}{rate(p)}{res} | "
            f"{fmt(w.get('pass_s'))}{rate(q)}{rres} | {ratio} | {r.get('w_done')} ({r.get('w_settled')}) | "
            f"{w.get('w_done', '?')} | {r.get('apf_exec')} / {r.get('apf_wait')} | "
            f"{w.get('apf_exec', '?')} / {w.get('apf_wait', '?')} |")
    out.append("")

    out.append("### Cost curve")
    out.append("")
    out.append("| namespaces | concurrency | peak RSS (VmHWM), MiB | CPU of the first pass, s (ms per namespace) | "
               "raw writer's CPU, s (ms per namespace) | no-op `once`: wall s / CPU s / writes | "
               "no-op resync sweep: s / CPU s / writes | idle CPU, s (over s) | restart: writes |")
    out.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in pk:
        n = num(r["n"])
        w = raw.get((r["n"], r["c"]), {})
        cpu, rcpu = num(r.get("cpu_pass")), num(w.get("cpu"))
        per = f" ({1000 * cpu / n:.2f})" if cpu is not None else ""
        rper = f" ({1000 * rcpu / n:.2f})" if rcpu is not None else ""
        note = " ⚠" if r.get("idle_note") else ""
        out.append(
            f"| {int(n):,} | {r['c']} | {fmt(r.get('hwm'))} | {fmt(cpu, 2)}{per} | {fmt(rcpu, 2)}{rper} | "
            f"{fmt(r.get('once_s'))} / {fmt(r.get('once_cpu'), 2)} / {r.get('once_w')} | "
            f"{fmt(r.get('sweep_s'), 3)} / {fmt(r.get('sweep_cpu'), 2)} / {r.get('sweep_writes')} | "
            f"{fmt(r.get('idle_cpu'), 2)} ({fmt(r.get('idle_s'), 0)}){note} | {r.get('restart_w')} |")
    out.append("")

    out.append("### New namespaces and rotation waves (on the last daemon of each size)")
    out.append("")
    out.append("| namespaces | idle: SA ADDED → reference, p50 / p99 / max ms (n) | wave: Secrets rotated, "
               "first → last s (trigger → first s) | wave: write requests (Secrets rotated) | "
               "during a wave: p50 / p99 / max ms (n; SAs added before the wave's end) | "
               "second wave first → last s, writes |")
    out.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
    lat = {r["n"]: r["data"] for r in rows if r["kind"] == "latency"}
    waves = {r["n"]: r for r in rows if r["kind"] == "wave"}
    waves2 = {r["n"]: r for r in rows if r["kind"] == "wave2"}
    for n in sorted({*lat, *waves}, key=int):
        def pct(d):
            s = (d or {}).get("sa_added_to_reference") or {}
            if not s.get("n"):
                return "?"
            never = (d or {}).get("never_referenced", 0)
            extra = f", {never} never" if never else ""
            return f"{fmt(s.get('p50_ms'), 0)} / {fmt(s.get('p99_ms'), 0)} / {fmt(s.get('max_ms'), 0)} ({s['n']}{extra})"
        wv = waves.get(n, {})
        wd = wv.get("data", {})
        w2 = waves2.get(n, {})
        d2 = w2.get("data", {})
        nn = d2.get("new_namespaces") or {}
        out.append(
            f"| {int(n):,} | {pct(lat.get(n))} | {wd.get('rotated', '?')} of {wd.get('secrets', '?')}, "
            f"{fmt(wd.get('first_to_last_s'), 2)} ({fmt(wd.get('trigger_to_first_s'), 1)}) | "
            f"{wv.get('writes', '?')} ({wd.get('rotated', '?')}) | "
            f"{pct(nn)[:-1] + '; ' + str(nn.get('added_before_wave_end', '?')) + ')' if nn else '?'} | "
            f"{fmt(d2.get('first_to_last_s'), 2)} s, {w2.get('writes', '?')} |")
    out.append("")

    out.append("Details:")
    out.append("")
    for n, r in sorted(ns.items(), key=lambda kv: int(kv[0])):
        out.append(f"- creating {r['created']} namespaces (until every default ServiceAccount existed): {r['seconds']} s")
    for r in pk:
        tag = f"N={r['n']} C={r['c']} rate={rate_name(r['rate'])}"
        out.append(f"- {tag} pullkeeper: ready {r.get('ready_s')} s, first write seen {r.get('first_write_s')} s, "
                   f"all Secrets {r.get('secrets_s')} s, all references {r.get('refs_s')} s after start; "
                   f"API-server writes (and GETs) by resource/verb/code: {r.get('w_detail')}; "
                   f"pullkeeper_writes_total: {r.get('pk')} ({r.get('pk_detail')}); "
                   f"RSS at the end {r.get('rss')} MiB; `once` peak RSS {r.get('once_hwm')} MiB, exit {r.get('once_rc')}; "
                   f"restart ready {r.get('restart_ready')} s, peak RSS {r.get('restart_hwm')} MiB; "
                   f"in flight sampled {r.get('apf_samples')} times, priority level {r.get('apf_pl')}, "
                   f"flow schema {r.get('apf_fs')}"
                   + (f"; missing: {r['missing']}" if r.get("missing") else "")
                   + (f"; {r['idle_note']}" if r.get("idle_note") else ""))
    for (n, c), r in sorted(raw.items(), key=lambda kv: (int(kv[0][0]), int(kv[0][1]))):
        out.append(f"- N={n} C={c} raw writer: its own clock {fmt(r.get('self_s'), 2)} s (list {fmt(r.get('list_s'), 2)} s); "
                   f"requests {r.get('requests')}; API-server writes: {r.get('w_detail')}; "
                   f"in flight sampled {r.get('apf_samples')} times, priority level {r.get('apf_pl')}")
    for n, r in sorted(waves.items(), key=lambda kv: int(kv[0])):
        out.append(f"- N={n} wave: writes by resource/verb/code {r.get('detail')}; pullkeeper_writes_total +{r.get('pk_writes')}")
    for n, r in sorted(waves2.items(), key=lambda kv: int(kv[0])):
        out.append(f"- N={n} second wave (with {(r.get('data', {}).get('new_namespaces') or {}).get('namespaces', '?')} "
                   f"new namespaces): writes {r.get('detail')}")
    if apf_limits:
        out.append(f"- API server priority levels (seats): {'; '.join(apf_limits)}")
    return "\n".join(out)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pk = [r for r in rows if r["kind"] == "pk" and num(r["rate"]) == 0]
    raw = [r for r in rows if r["kind"] == "raw"]
    concs = sorted({int(r["c"]) for r in pk + raw})
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    fig.suptitle("pullkeeper fan-out benchmark (bench/run.sh)")

    def series(ax, data, key, label, style="-o", scale=1.0, per_ns=False):
        pts = sorted((int(r["n"]), num(r.get(key))) for r in data)
        pts = [(n, v) for n, v in pts if v is not None]
        if pts:
            ax.plot([n for n, _ in pts], [v * scale / (n if per_ns else 1) for n, v in pts], style, label=label)

    for c in concs:
        p = [r for r in pk if int(r["c"]) == c]
        q = [r for r in raw if int(r["c"]) == c]
        series(axes[0][0], p, "hwm", f"pullkeeper C={c}")
        series(axes[0][1], p, "pass_s", f"pullkeeper C={c}")
        series(axes[0][1], q, "pass_s", f"raw writer C={c}", "--s")
        series(axes[1][0], p, "cpu_pass", f"pullkeeper C={c}", scale=1000, per_ns=True)
        series(axes[1][0], q, "cpu", f"raw writer C={c}", "--s", scale=1000, per_ns=True)
        series(axes[0][2], p, "once_s", f"`once` C={c}")
        series(axes[0][2], p, "sweep_s", f"resync sweep C={c}", "--s")
        series(axes[1][1], p, "idle_cpu", f"C={c}")
    lat = [r for r in rows if r["kind"] == "latency"]
    wav = [r for r in rows if r["kind"] == "wave2"]
    for key, style in (("p50_ms", "-o"), ("p99_ms", "-^")):
        pts = sorted((int(r["n"]), (r["data"].get("sa_added_to_reference") or {}).get(key)) for r in lat)
        pts = [(n, v) for n, v in pts if v is not None]
        if pts:
            axes[1][2].plot(*zip(*pts), style, label=f"idle {key[:3]}")
        pts = sorted((int(r["n"]), ((r["data"].get("new_namespaces") or {}).get("sa_added_to_reference") or {}).get(key))
                     for r in wav)
        pts = [(n, v) for n, v in pts if v is not None]
        if pts:
            axes[1][2].plot(*zip(*pts), "--" + style[1:], label=f"during a wave {key[:3]}")
    titles = [
        ("peak RSS (VmHWM), MiB", axes[0][0]),
        ("first pass, s (start → every Secret and reference)", axes[0][1]),
        ("no-op pass, s", axes[0][2]),
        ("CPU per namespace of the first pass, ms", axes[1][0]),
        ("idle CPU after the pass (over PK_BENCH_IDLE, 60 s by default), s", axes[1][1]),
        ("new namespace: SA ADDED → reference, ms", axes[1][2]),
    ]
    for title, ax in titles:
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log")
        ax.set_xlabel("namespaces")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylim(bottom=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--header")
    ap.add_argument("--apf-limits")
    ap.add_argument("--markdown")
    ap.add_argument("--plot")
    a = ap.parse_args()
    rows = load(a.results)
    limits = []
    if a.apf_limits:
        try:
            with open(a.apf_limits) as f:
                limits = [line.strip() for line in f if line.strip()]
        except OSError:
            pass
    text = ""
    if a.header:
        with open(a.header) as f:
            text = f.read() + "\n"
    text += tables(rows, limits) + "\n"
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text)
    sys.stdout.write(text)
    if a.plot:
        plot(rows, a.plot)
        print(f"plot: {a.plot}")


if __name__ == "__main__":
    main()
