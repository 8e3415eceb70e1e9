"""bench/soak/report.md from the soak's results (the same data goes to report.json)."""

from __future__ import annotations

from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(data: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    totals = data["totals"]
    host = data["host"]
    lines = [
        "# Portico soak report",
        "",
        f"`{data['when']}` · load {data['seconds']:.0f} s (+ {data['setup_seconds']:.0f} s set-up,"
        f" {data['end']['drain_seconds']:.0f} s drain) · {host['cpus']} CPUs, shared with other "
        f"work · load average at start {_loads(host['load_avg_at_start'])}, at end "
        f"{_loads(host['load_avg_at_end'])} · CPython {host['python']} · commit "
        f"`{data['code']['commit']}`"
        + (" (a clean `git archive` snapshot)" if data["code"].get("snapshot") else "")
        + (
            f" + uncommitted changes in {', '.join(data['code']['modified_files'])}"
            if data["code"]["modified_files"]
            else ""
        ),
        "",
        "The whole platform as processes (`tests/e2e/stack.py` `Stack`: SecantusDB, users, orgs, "
        "files, gateway with one worker; its own RabbitMQ vhost, Redis prefix and exchange), "
        "default route table: rate limits, cache and event consumers on. An open-loop aiohttp "
        "generator (`bench/soak/traffic.py`) offers a fixed mix; re-run with `make soak` "
        "(`SOAK_SECONDS=...`) or `.venv/bin/python -m bench.soak --seconds N`.",
        "",
        "## Verdict",
        "",
        "| check | result | |",
        "|---|---|---|",
    ]
    for check in data["checks"]:
        lines.append(
            f"| {check['name']} | {'pass' if check['ok'] else '**FAIL**'} | {check['detail']} |"
        )
    lines += [
        "",
        "## Summary",
        "",
        "| figure | value |",
        "|---|---|",
        f"| offered rate | {totals['offered_rps']:.0f} req/s |",
        f"| achieved rate | {totals['achieved_rps']:.1f} req/s "
        f"({totals['achieved_rps'] / totals['offered_rps']:.0%} of offered) |",
        f"| requests | {totals['requests']:,} |",
        f"| errors (5xx, connection errors, timeouts, unexpected status, failed checks) "
        f"| {totals['errors']:,} |",
        f"| error ratio | {totals['error_ratio']:.4%} |",
        f"| 429 (not errors) | {totals['429']:,} ({totals['429_anonymous']:,} on the anonymous "
        f"route, {totals['429'] - totals['429_anonymous']:,} elsewhere) |",
        f"| operations due but not sent (backlog cap) | {totals['skipped']:,} |",
        f"| set-up calls retried after a 5xx or no answer (not in the figures above) | "
        f"{totals['setup_retries']} |",
        f"| stale reads of one's own write / wrong download bytes | {totals['stale_reads']} / "
        f"{totals['bad_bodies']} |",
        f"| latency p50 / p99 / max, whole run | {_ms(totals['p50_ms'])} / "
        f"{_ms(totals['p99_ms'])} / {_ms(totals['max_ms'])} ms |",
        f"| p99 per full window, min - max | {_ms(totals['p99_window_min_ms'])} - "
        f"{_ms(totals['p99_window_max_ms'])} ms |",
        "",
        "## Calls by kind",
        "",
        "| call | requests | errors | 429 | p50 ms | p99 ms | statuses |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, row in data["kinds"].items():
        statuses = ", ".join(f"{k}: {v:,}" for k, v in row["statuses"].items())
        lines.append(
            f"| {kind} | {row['requests']:,} | {row['errors']:,} | {row['429']:,} | "
            f"{_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | {statuses} |"
        )
    names = list(data["processes"])
    lines += [
        "",
        f"## Windows ({data['window_seconds']:.0f} s)",
        "",
        "Latency is the client's (request sent to body read). RSS in MiB (VmRSS from /proc) at the "
        "end of each window; CPU % of one core over the window (`client`: this load generator). "
        "Windows ending after the load's last second hold only the calls still in flight.",
        "",
        "| # | end s | req/s | errors | 429 | p50 ms | p99 ms | load 1m | "
        + " | ".join(f"{n} RSS" for n in names)
        + " | "
        + " | ".join(f"{n} CPU%" for n in names)
        + " | client CPU% |",
        "|---" * (9 + 2 * len(names)) + "|",
    ]
    for w in data["windows"]:
        lines.append(
            f"| {w['index']} | {w['end_s']:.0f} | {w['rps']:.1f} | {w['errors']} | {w['429']} | "
            f"{_ms(w['p50_ms'])} | {_ms(w['p99_ms'])} | {w['load1']:.2f} | "
            + " | ".join(_num(w["rss_mib"].get(n)) for n in names)
            + " | "
            + " | ".join(_num(w["cpu_pct"].get(n), 0) for n in names)
            + f" | {w['client_cpu_pct']} |"
        )
    lines += [
        "",
        "## RSS trend per process",
        "",
        f"Least-squares slope of RSS over the second half of the run (samples at t >= "
        f"{data['seconds'] / 2:.0f} s); a process counts as growing when the slope is above "
        f"{data['growth_rule']['mib_per_min']} MiB/min and the line explains the samples "
        f"(r² >= {data['growth_rule']['min_r2']}). SecantusDB (the test stand-in for MongoDB) "
        "is shown but not checked: its memory follows the data the run leaves (see the "
        "document counts below).",
        "",
        "| process | after set-up MiB | mid-run MiB | end MiB | peak MiB | after drain MiB | "
        "slope MiB/min | r² | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, proc in data["processes"].items():
        t = proc["trend"]
        lines.append(
            f"| {name} | {_num(proc['rss_start_mib'])} | {_num(proc['rss_mid_mib'])} | "
            f"{_num(proc['rss_end_mib'])} | {_num(proc['rss_peak_mib'])} | "
            f"{_num(proc['rss_after_drain_mib'])} | {_num(t['slope_mib_per_min'], 3)} | "
            f"{_num(t['r2'], 2)} | {t['verdict']}{'' if proc['checked'] else ' (not checked)'} |"
        )
    end = data["end"]
    lines += [
        "",
        "## Outbox and queues at the end",
        "",
        f"After the load stopped: {'drained' if end['drained'] else '**not drained**'} in "
        f"{end['drain_seconds']:.1f} s (no pending outbox entry, no message in any queue but the "
        "DLQs).",
        "",
        "| service | outbox pending | outbox sent (events published) |",
        "|---|---|---|",
    ]
    for service, counts in end["outbox"].items():
        lines.append(f"| {service} | {counts['pending']:,} | {counts['sent']:,} |")
    lines += ["", "| queue | ready | unacked |", "|---|---|---|"]
    for name, q in end["queues"].items():
        lines.append(f"| `{name}` | {q['ready']:,} | {q['unacked']:,} |")
    lines += [
        "",
        "Data the run left (documents per collection; SecantusDB's RSS follows its data):",
        "",
        "| collection | after set-up | end |",
        "|---|---|---|",
    ]
    for name, counts in data["documents"].items():
        lines.append(f"| `{name}` | {counts['after_setup']:,} | {counts['end']:,} |")
    lines += ["", "## Process logs", ""]
    lines.append("| process | error lines | warnings | tracebacks | by event |")
    lines.append("|---|---|---|---|---|")
    for name, counts in data["logs"].items():
        events = ", ".join(f"{event} ({n})" for event, n in counts["events"].items()) or "-"
        lines.append(
            f"| {name} | {counts['error']} | {counts['warning']} | {counts['traceback']} | "
            f"{events} |"
        )
    for name, counts in data["logs"].items():
        for line in counts["first_errors"]:
            lines.append(f"- {name}: `{line}`")
    if data["error_samples"]:
        lines += ["", "## First errors", "", "| call | status | detail |", "|---|---|---|"]
        for sample in data["error_samples"]:
            detail = str(sample["detail"]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {sample['kind']} | {sample['status']} | {detail} |")
    lines += ["", "## Offered mix", ""]
    lines.append("| operation | operations/s | requests per operation | launched |")
    lines.append("|---|---|---|---|")
    for name, row in data["mix"].items():
        lines.append(
            f"| {name} | {row['ops_per_s']:.2f} | {row['requests_per_op']:g} | "
            f"{row['launched']:,} |"
        )
    return "\n".join(lines) + "\n"


def _loads(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)
