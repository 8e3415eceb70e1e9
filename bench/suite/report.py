"""bench/report.md from the suite's results: headline ratios vs targets, every run, profiles."""

from __future__ import annotations

from typing import Any


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def headline(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per scenario: the gateway figure, its same-run baseline, the ratio, the target."""
    runs: dict[str, dict[str, Any]] = data["runs"]
    rows: list[dict[str, Any]] = []

    def add(
        scenario: str,
        metric: str,
        value: float,
        baseline_name: str,
        baseline: float,
        ratio: float,
        target: str,
        ok: bool | None,
        unit: str = "req/s",
        cpu: tuple[str, str] | None = None,
    ) -> None:
        if unit == "req/s" and not last:
            return  # one of the two runs is not in this report (`--runs`, `--only`)
        rows.append(
            {
                "scenario": scenario,
                "metric": metric,
                "gateway": value,
                "unit": unit,
                "baseline": baseline_name,
                "baseline_value": baseline,
                "ratio": ratio,
                "target": target,
                "met": ok,
                "cpu_us": [runs[n]["cpu_us"] for n in last] if unit == "req/s" and last else None,
            }
        )

    def rps(name: str) -> float:
        return float(runs[name]["rps"]) if name in runs else 0.0

    last: list[str] = []  # the (gateway, baseline) runs of the rows being added

    def pair(gateway: str, baseline: str) -> tuple[float, float]:
        last[:] = [gateway, baseline] if gateway in runs and baseline in runs else []
        return rps(gateway), rps(baseline)

    if any(name.startswith("(") for name in runs):  # the proxy scenarios ran, all or some
        g, n = pair("(1) gateway cache hit public", "nginx proxy_cache public")
        add(
            "(1) cache hit, public",
            "req/s",
            g,
            "nginx proxy_cache",
            n,
            _ratio(g, n),
            ">= 35%",
            _ratio(g, n) >= 0.35,
        )
        paced = runs.get("(1) gateway cache hit public @50%")
        base = runs.get("nginx proxy_cache public @50%")
        if paced and base:
            add(
                "(1) cache hit, public",
                "p99 at 50% of saturation",
                paced["p99_ms"],
                "nginx proxy_cache, same rate",
                base["p99_ms"],
                _ratio(paced["p99_ms"], base["p99_ms"]),
                "p99 < 5 ms",
                paced["p99_ms"] < 5,
                unit="ms",
            )
        g, n = pair("(2) gateway cache hit per-user", "nginx proxy_cache per-user")
        add(
            "(2) cache hit, per-user key",
            "req/s",
            g,
            "nginx proxy_cache (key + Authorization)",
            n,
            _ratio(g, n),
            "-",
            None,
        )
        g, n = pair("(3) gateway cache miss auth GET", "nginx proxy")
        add(
            "(3) cache miss, authenticated GET",
            "req/s",
            g,
            "nginx reverse proxy",
            n,
            _ratio(g, n),
            ">= 70%",
            _ratio(g, n) >= 0.70,
        )
        floor, n = pair("Python floor (bare uvloop proxy)", "nginx proxy")
        if floor:
            add(
                "(3) cache miss, authenticated GET",
                "Python floor: a bare uvloop proxy vs nginx",
                floor,
                "nginx reverse proxy",
                n,
                _ratio(floor, n),
                "-",
                None,
            )
            g, floor = pair("(3) gateway cache miss auth GET", "Python floor (bare uvloop proxy)")
            add(
                "(3) cache miss, authenticated GET",
                "req/s vs the Python floor",
                g,
                "bare uvloop proxy",
                floor,
                _ratio(g, floor),
                "-",
                None,
            )
        g, direct = pair("(3) gateway cache miss auth GET", "upstream direct")
        add(
            "(3) cache miss, authenticated GET",
            "req/s vs direct",
            g,
            "upstream direct",
            direct,
            _ratio(g, direct),
            "-",
            None,
        )
        paced = runs.get("(3) gateway cache miss auth GET @50%")
        base = runs.get("upstream direct @50%")
        if paced and base:
            added = paced["p50_ms"] - base["p50_ms"]
            add(
                "(3) cache miss, authenticated GET",
                "added p50 at 50% of saturation",
                added,
                "upstream direct p50, same rate",
                base["p50_ms"],
                0.0,
                "< 1 ms",
                added < 1,
                unit="ms",
            )
        g, n = pair("(4) gateway + limiter (admits all)", "(3) gateway cache miss auth GET")
        paired = data.get("limiter") or {}
        add(
            "(4) limiter, admits all",
            "req/s, best of each",
            g,
            "same route, limits off",
            n,
            _ratio(g, n),
            "-" if paired else "cost < 10%",
            None if paired else 1 - _ratio(g, n) < 0.10,
        )
        if paired:
            last.clear()
            median = paired["median_ratio"]
            add(
                "(4) limiter, admits all",
                f"req/s, median of {paired['pairs']} back-to-back pairs (on / off); gateway CPU "
                f"{paired['median_cpu_us_added']:+.1f} µs/req",
                median,
                "same route, limits off, same pair",
                1.0,
                median,
                "cost < 10%",
                1 - median < 0.10,
                unit="ratio",
            )
        ng, nn = pair("nginx limit_req (admits all)", "nginx proxy")
        add(
            "(4) limiter, admits all",
            "nginx's own limit_req cost",
            ng,
            "nginx proxy",
            nn,
            _ratio(ng, nn),
            "-",
            None,
        )
        g, n = pair("(5) gateway 429 path", "nginx limit_req 429")
        add("(5) 429 path", "req/s", g, "nginx limit_req 429", n, _ratio(g, n), "-", None)
        g, n = pair("(6) gateway API-key GET", "(3) gateway cache miss auth GET")
        add("(6) API-key GET", "req/s", g, "gateway, JWT (3)", n, _ratio(g, n), "-", None)
        g, nn = pair("(6) gateway API-key GET", "nginx proxy")
        add(
            "(6) API-key GET",
            "req/s vs nginx",
            g,
            "nginx reverse proxy",
            nn,
            _ratio(g, nn),
            "-",
            None,
        )
    if "(7) gateway login" in runs:
        g, n = pair("(7) gateway login", "users login direct")
        add(
            "(7) login (argon2id)",
            "req/s (CPU: gateway's vs users')",
            g,
            "users service direct",
            n,
            _ratio(g, n),
            "-",
            None,
        )
    last.clear()
    files = data.get("files") or {}
    if files:
        g, raw = files["gateway_upload_mbs"], files["raw_write_mbs"]
        add(
            "(8) upload",
            "MB/s",
            g,
            "raw disk write + fsync",
            raw,
            _ratio(g, raw),
            ">= 50%",
            _ratio(g, raw) >= 0.5,
            unit="MB/s",
        )
        d = files["direct_upload_mbs"]
        add(
            "(8) upload",
            "MB/s vs direct",
            g,
            "files service direct",
            d,
            _ratio(g, d),
            "-",
            None,
            unit="MB/s",
        )
        g, d = files["gateway_download_mbs"], files["direct_download_mbs"]
        add(
            "(8) download",
            "MB/s",
            g,
            "files service direct",
            d,
            _ratio(g, d),
            "-",
            None,
            unit="MB/s",
        )
        grow = files["gateway_peak_rss_mib"] - files["gateway_rss_before_transfer_mib"]
        add(
            "(8) upload",
            "gateway RSS growth (peak - before)",
            grow,
            f"{files['size_mib']} MiB transferred",
            files["size_mib"],
            _ratio(grow, files["size_mib"]),
            "flat (< 16 MiB)",
            grow < 16,
            unit="MiB",
        )
    events = data.get("events") or {}
    if events:
        add(
            "(9) event end-to-end",
            f"p99 at {events['rate']:.0f}/s",
            events["p99_ms"],
            "offered rate (events/s)",
            events["offered_rate"],
            0.0,
            "p99 < 100 ms",
            events["p99_ms"] < 100,
            unit="ms",
        )
    return rows


def _fmt(value: float, unit: str) -> str:
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "ratio":
        return f"{value:.2f}"
    if unit == "MB/s":
        return f"{value:,.0f} MB/s"
    return f"{value:.2f} {unit}"


def render(data: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    rows = headline(data)
    pin = data["pinning"]
    pinned = (
        f"wrk pinned to CPU {pin['generator']}, every server process to CPU {pin['servers']} "
        "(`taskset`); one process / worker per server"
        if pin["generator"]
        else "no pinning (`--no-pin` or one CPU)"
    )
    lines = [
        "# Portico benchmark report",
        "",
        f"`{data['when']}` · mode **{data['mode']}** · {data['elapsed_s']} s · "
        f"{data['host']['cpus']} CPUs (shared with other work; load average at start "
        f"{', '.join(f'{x:.1f}' for x in data['host']['load_avg_at_start'])}, at end "
        f"{', '.join(f'{x:.1f}' for x in data['host'].get('load_avg_at_end', ()))}) · CPython "
        f"{data['host']['python']} · {pinned}.",
        "",
        "Every ratio compares figures measured in this run on this machine. Re-run with "
        "`make bench` (normal, ~5-8 min) or `.venv/bin/python -m bench --quick` (~2 min).",
        "",
        *(f"**{part} did not complete**: `{why}`\n" for part, why in data["failures"].items()),
        "## Headline",
        "",
        "req/s swings with the load other work puts on this shared box; the CPU each request "
        "costs the server under test (gateway vs baseline, from /proc) is the steadier figure.",
        "",
        "| scenario | metric | gateway | baseline (same run) | baseline | ratio | target | met "
        "| CPU µs/req gateway / baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        ratio = f"{r['ratio']:.0%}" if r["ratio"] else "-"
        cpu = " / ".join(f"{c:.0f}" for c in r["cpu_us"]) if r["cpu_us"] else "-"
        unit = "ms" if r["unit"] == "ms" and "p50" in r["baseline"] else r["unit"]
        if r["unit"] == "ms" and r["baseline"].startswith("offered"):
            base = f"{r['baseline_value']:.0f}/s"
        elif r["unit"] == "MiB":
            base = f"{r['baseline_value']:.0f} MiB"
        else:
            base = _fmt(r["baseline_value"], unit)
        lines.append(
            f"| {r['scenario']} | {r['metric']} | {_fmt(r['gateway'], r['unit'])} | "
            f"{r['baseline']} | {base} | {ratio} | {r['target']} | {met} | {cpu} |"
        )
    lines += [
        "",
        "## Every run",
        "",
        f"Saturation: `wrk -t1 -c64`, {data['duration_s']} s per run, best of {data['rounds']} "
        "interleaved rounds; `@50%`: a random pause per connection after each response "
        "(exponential, mean 10 ms: the connections' requests spread out like independent "
        "clients', not in synchronised bursts) and as many connections as give half of the "
        "gateway's saturated rate, same for gateway and baseline. Latencies "
        "from wrk (p99.9 through a Lua `done()`); errors = socket errors, timeouts and unexpected "
        "statuses (for the 429 rows, anything but 429); CPU = utime+stime (/proc) of the server "
        "under test (gateway or nginx; the upstream for `upstream direct`) per request; RSS of "
        "that server after the run. Access logs are off in nginx and the gateway alike (the "
        "gateway's default is on: its batched JSON line costs ~2 µs of CPU per request).",
        "",
        "| run | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU µs/req | RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in data["runs"].items():
        lines.append(
            f"| {name} | {r['rps']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.2f} | "
            f"{r['p999_ms']:.2f} | {r['errors']} | {r['cpu_us']:.0f} | {r['rss_mib']:.0f} |"
        )
    lines += [
        "",
        "Reading it: one error on a 429 row is the one request the deny policy admits (burst 1; "
        "nginx's zone admits one a minute). `@50%` rows aim at the same rate for gateway and "
        "baseline, but a slower server completes fewer cycles of its connections, so compare "
        "latency, not their req/s. A load average well above the CPU count means other work "
        "shared both cores: req/s and tail latencies then understate every Python process "
        "(gateway, upstream) more than nginx.",
    ]
    limiter = data.get("limiter") or {}
    if limiter:
        lines += [
            "",
            f"Limiter cost, pair by pair: (4) / (3) req/s of {limiter['pairs']} back-to-back "
            "pairs (the saturation rounds plus extra pairs in alternating order), sorted: "
            f"{', '.join(f'{r:.2f}' for r in limiter['ratios'])}; median "
            f"{limiter['median_ratio']:.2f}"
            + (
                f" ({limiter['dropped_pairs_with_errors']} pairs with failed requests left out)"
                if limiter.get("dropped_pairs_with_errors")
                else ""
            )
            + f". The gateway's own CPU changes by a median {limiter['median_cpu_us_added']:+.1f} "
            "µs a request; the rest of the cost is Redis running the script on the same two "
            "cores.",
        ]
    files = data.get("files") or {}
    if files:
        lines += [
            "",
            f"## Files ({files['size_mib']} MiB, local backend, real gateway/users/files)",
            "",
            "| what | MB/s |",
            "|---|---|",
            f"| raw disk write (1 MiB blocks + fsync) | {files['raw_write_mbs']:.0f} |",
            f"| raw disk read | {files['raw_read_mbs']:.0f} |",
            f"| upload direct to files | {files['direct_upload_mbs']:.0f} |",
            f"| upload through the gateway | {files['gateway_upload_mbs']:.0f} |",
            f"| download direct from files | {files['direct_download_mbs']:.0f} |",
            f"| download through the gateway | {files['gateway_download_mbs']:.0f} |",
            "",
            f"Gateway RSS: {files['gateway_rss_before_transfer_mib']:.0f} MiB before its "
            f"transfer, peak {files['gateway_peak_rss_mib']:.0f} MiB, "
            f"{files['gateway_rss_after_mib']:.0f} MiB after; files service peak "
            f"{files['files_peak_rss_mib']:.0f} MiB.",
        ]
    events = data.get("events") or {}
    if events:
        lines += [
            "",
            "## Event bus (bench/events: outbox commit -> relay -> RabbitMQ -> consumer handler)",
            "",
            f"{events['events']:.0f} events offered at {events['rate']:.0f}/s "
            f"(achieved {events['offered_rate']:.0f}/s, "
            f"sustained {events['sustained_rate']:.0f}/s):"
            f" p50 {events['p50_ms']:.1f} ms, p90 {events['p90_ms']:.1f} ms, p99 "
            f"{events['p99_ms']:.1f} ms, max {events['max_ms']:.1f} ms.",
        ]
        low = events.get("low_rate")
        if low:
            lines += [
                "",
                f"Below saturation, {low['events']:.0f} events at {low['rate']:.0f}/s (achieved "
                f"{low['offered_rate']:.0f}/s, sustained {low['sustained_rate']:.0f}/s): p50 "
                f"{low['p50_ms']:.1f} ms, p99 {low['p99_ms']:.1f} ms, max {low['max_ms']:.1f} ms.",
            ]
    profiles = data.get("profiles") or {}
    if profiles:
        lines += [
            "",
            "## Profiles (py-spy, 200 Hz, by function, the gateway worker under saturation)",
            "",
            "Share of samples; *self* = the frame was on top, *inclusive* = anywhere in the stack. "
            "Measured only, nothing changed in the gateway by this suite.",
        ]
        for name, prof in profiles.items():
            lines += ["", f"### {name}", ""]
            if "error" in prof:
                lines.append(f"Not profiled: {prof['error']}")
                continue
            lines += [f"{prof['samples']} samples.", "", "| self % | frame |", "|---|---|"]
            lines += [f"| {pct} | `{frame}` |" for frame, pct in prof["self"]]
            lines += ["", "| inclusive % | frame |", "|---|---|"]
            lines += [f"| {pct} | `{frame}` |" for frame, pct in prof["inclusive"]]
    return "\n".join(lines) + "\n", rows
