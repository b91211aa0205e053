"""bench/consumer.py's output: the table (each figure against its baseline from the same run) and the chart."""

from __future__ import annotations

import math

from bench.consumer_e2e import percentile

WIDTHS = (44, 11, 11, 8, 16, 4)


def rows(results: dict) -> list[tuple]:
    """(figure, ours, baseline, ratio, target, met) per line; met is None where no target applies."""
    out = []
    raw, ours, celery = results.get("raw"), results.get("ours"), results.get("celery")
    if raw and ours:
        out.append(
            (
                "SQLite events/s: ours / raw loop",
                ours.rate,
                raw.rate,
                ours.rate / raw.rate,
                ">= 0.40x",
                ours.rate / raw.rate >= 0.40,
            )
        )
        out.append(
            ("SQLite CPU us/event: ours / raw loop", ours.cpu_us, raw.cpu_us, ours.cpu_us / raw.cpu_us, "", None)
        )
        out.append(
            (
                "RSS after draining, MB: ours / raw loop",
                ours.rss_mb,
                raw.rss_mb,
                ours.rss_mb / raw.rss_mb,
                "ours <= 80 MB",
                ours.rss_mb <= 80,
            )
        )
    if ours and celery:
        out.append(
            (
                "SQLite events/s: ours / Celery -c 2",
                ours.rate,
                celery.rate,
                ours.rate / celery.rate,
                ">= 5x",
                ours.rate / celery.rate >= 5,
            )
        )
        out.append(
            ("SQLite CPU us/event: ours / Celery", ours.cpu_us, celery.cpu_us, ours.cpu_us / celery.cpu_us, "", None)
        )
    one, two = results.get("pg_one"), results.get("pg_two")
    if one and two:
        out.append(
            (
                "PostgreSQL events/s: 2 consumers / 1",
                two.rate,
                one.rate,
                two.rate / one.rate,
                ">= 1.6x",
                two.rate / one.rate >= 1.6,
            )
        )
        out.append(
            ("PostgreSQL CPU us/event: 2 consumers / 1", two.cpu_us, one.cpu_us, two.cpu_us / one.cpu_us, "", None)
        )
    e2e = results.get("e2e")
    if e2e:
        for name, q in (("p50", 50), ("p99", 99), ("max", 100)):
            ours_ms, bare_ms = percentile(e2e["e2e"], q) * 1000, percentile(e2e["bare"], q) * 1000
            target, met = ("<= 50 ms", ours_ms <= 50) if name == "p99" else ("", None)
            out.append(
                (f"end to end {name} ms: commit / bare round trip", ours_ms, bare_ms, ours_ms / bare_ms, target, met)
            )
        ours_ms, bare_ms = percentile(e2e["receiver"], 99) * 1000, percentile(e2e["bare"], 99) * 1000
        out.append(("receiver round trip p99 ms: ours / bare", ours_ms, bare_ms, ours_ms / bare_ms, "", None))
    return out


def print_table(results: dict, args, notes: list[str]) -> None:
    print(
        f"\n{args.events} events over {math.ceil(args.events / 10)} communities, LOG_LEVEL {args.log_level}, "
        f"best of {args.rounds} round(s); ratio = ours / baseline"
    )
    header = ("figure", "ours", "baseline", "ratio", "target", "met")
    print(_line(header))
    print(_line(tuple("-" * width for width in WIDTHS)))
    for figure, ours, base, ratio, target, met in rows(results):
        print(
            _line(
                (
                    figure,
                    _num(ours),
                    _num(base),
                    f"{ratio:.2f}x",
                    target,
                    "" if met is None else ("yes" if met else "NO"),
                )
            )
        )
    e2e = results.get("e2e")
    if e2e:
        print(
            f"\nend to end: {len(e2e['e2e'])} events at {args.rate:g}/s over {args.connections} connections, "
            f"{e2e['missing']} never seen committed, {e2e['failed']} answered non-200, sender's worst slip "
            f"{e2e['slip'] * 1000:.1f} ms; commits seen by polling every 2 ms"
        )
        print(
            "  of which, p50 / p99: send to XADD (entry id's ms) "
            + _split(e2e["to_queue"])
            + ", XADD to commit seen "
            + _split(e2e["to_commit"])
        )
        print(
            f"  outcomes, warm-up included: {e2e['outcomes']} (stale: an event overtaken by a newer one of its "
            f"subscription on another connection, as Stripe's deliveries can be)"
        )
    drains = [(name, results[name]) for name in ("raw", "ours", "celery", "pg_one", "pg_two") if results.get(name)]
    if drains:
        print(
            "machine CPU busy while draining (both cores): "
            + ", ".join(f"{name} {drain.machine_busy:.0%}" for name, drain in drains)
        )
    for name in ("ours", "pg_one", "pg_two"):
        if results.get(name) and results[name].outcomes:
            print(f"{name} outcomes: {results[name].outcomes}")
    for note in notes:
        print(note)


def _split(values: list[float]) -> str:
    return f"{percentile(values, 50) * 1000:.1f} / {percentile(values, 99) * 1000:.1f} ms"


def _line(cells: tuple) -> str:
    first, *rest = cells
    return f"{first:<{WIDTHS[0]}} " + " ".join(f"{cell:>{width}}" for cell, width in zip(rest, WIDTHS[1:]))


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def plot(results: dict, out: str) -> None:
    try:
        import matplotlib
    except ImportError:  # the figures are printed above; only the chart needs the bench extra
        print(f"no chart written to {out}: matplotlib is not installed (bin/install test,bench)")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    figure, (bars, cdf) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = {
        "raw": "raw loop",
        "ours": "ours\nSQLite",
        "celery": "Celery\n-c 2",
        "pg_one": "ours PG\n1 consumer",
        "pg_two": "ours PG\n2 consumers",
    }
    shown = [(label, results[key].rate) for key, label in labels.items() if results.get(key)]
    if shown:
        names, rates = zip(*shown)
        drawn = bars.bar(names, rates, color=["#999999" if "ours" not in n else "#3366cc" for n in names])
        bars.bar_label(drawn, fmt="{:,.0f}")
    bars.set_ylabel("events / s")
    bars.set_title("Draining the queued events")
    e2e = results.get("e2e")
    if e2e:
        for key, label in (
            ("e2e", "ours: send to commit"),
            ("receiver", "ours: receiver round trip"),
            ("bare", "bare Flask: round trip"),
        ):
            values = sorted(v * 1000 for v in e2e[key])
            if values:
                cdf.plot(values, [(n + 1) / len(values) for n in range(len(values))], label=label)
        cdf.axvline(50, color="red", linestyle=":", label="50 ms target (p99)")
        cdf.set_xscale("log")
        cdf.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        cdf.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        cdf.xaxis.set_minor_formatter(ticker.NullFormatter())
        cdf.set_xlabel("ms")
        cdf.set_ylabel("fraction of events")
        cdf.set_title("End-to-end latency (CDF)")
        cdf.legend(loc="lower right")
    else:
        cdf.set_visible(False)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
