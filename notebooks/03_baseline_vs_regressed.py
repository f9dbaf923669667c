# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Baseline against a regressed tape
#
# Two tapes of the same cluster, same seed and load: `synth-baseline.tape` (a good run) and
# `synth-incident.tape` (a run with problems). A CI pipeline records both around its integration
# tests; here we compare them by hand to see *what* regressed: latency, errors, DNS, new
# destinations, traffic placement. Each finding is asserted against the data.

# %%
import matplotlib.pyplot as plt
import polars as pl

import flowtape

pl.Config.set_tbl_width_chars(160)
pl.Config.set_tbl_rows(25)

base = flowtape.open("../fixtures/synth-baseline.tape")
new = flowtape.open("../fixtures/synth-incident.tape")
assert base.window == new.window and base.nodes == new.nodes
print(base, new, sep="\n")

# %% [markdown]
# ## 1. The call graph, edge by edge
#
# Join the two topology reports on (client, server). An edge present in only one tape is new or gone.

# %%
cols = ["requests", "errors_5xx", "p50_ms", "p99_ms"]
a = base.report.topology().select("client", "server", *cols)
b = new.report.topology().select("client", "server", *cols)
both = (a.join(b, on=["client", "server"], how="full", suffix="_new", coalesce=True)
         .with_columns(p50_ratio=pl.col("p50_ms_new") / pl.col("p50_ms"), p99_ratio=pl.col("p99_ms_new") / pl.col("p99_ms"),
                       extra_5xx=pl.col("errors_5xx_new") - pl.col("errors_5xx")))
new_edges = both.filter(pl.col("requests").is_null())
gone_edges = both.filter(pl.col("requests_new").is_null())
print("new edges:", new_edges.select("client", "server").rows())
print("gone edges:", gone_edges.select("client", "server").rows())

# %%
assert ("shop/search", "external:telemetry.collect-metrics.io") in new_edges.select("client", "server").rows()
assert gone_edges.height == 0

# %%
bare = [s for _, s in new_edges.select("client", "server").rows() if s != "external:telemetry.collect-metrics.io"]
seen = new.report.egress().filter(pl.col("destination").is_in([s.removeprefix("external:") for s in bare])).select("destination", "first_seen", "last_seen")
storm = new.report.dns_failures().filter(pl.col("rcode_name") == "SERVFAIL").select(pl.col("first_seen").min(), pl.col("last_seen").max()).row(0)
assert seen.height == len(bare) == 2 and seen["first_seen"].min() >= storm[0] and seen["last_seen"].max() <= storm[1]
seen

# %% [markdown]
# The regressed run talks to a host the baseline never contacted:
# **`telemetry.collect-metrics.io`**, called by `shop/search`. Worth asking who added it.
# The two other "new" edges go to bare addresses, reached only inside the DNS SERVFAIL storm
# (section 3): no DNS answer in the tape names them, so they are shown by IP.
#
# ## 2. Latency and errors on the edges both runs have

# %%
common = both.filter(pl.col("requests").is_not_null() & pl.col("requests_new").is_not_null() & (pl.col("requests") > 100))
changes = common.select("client", "server", "p50_ms", "p50_ms_new", "p99_ms", "p99_ms_new", "p99_ratio", "errors_5xx", "errors_5xx_new").sort("p99_ratio", descending=True)
changes

# %%
worst = changes.row(0, named=True)
assert (worst["client"], worst["server"]) == ("shop/api", "shop/catalog") and worst["p99_ratio"] > 2
most_errors = common.sort("extra_5xx", descending=True).row(0, named=True)
assert most_errors["server"] == "shop/catalog" and most_errors["extra_5xx"] > 20
print(f"api -> catalog: p99 {worst['p99_ms']:.0f} -> {worst['p99_ms_new']:.0f} ms, 5xx {most_errors['errors_5xx']} -> {most_errors['errors_5xx_new']}")

# %% [markdown]
# `api -> catalog` regressed twice over: its p99 more than doubled and it returned many more 5xx.
# The whole-tape p99 hides *when*: latency over time of that edge in both tapes shows it.

# %%
edge = [("shop/api", "shop/catalog")]
sa = base.report.latency_over_time(edges=edge)
sb = new.report.latency_over_time(edges=edge)
fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 4.5), sharex=True)
for s, label, colour in ((sa, "baseline", "#888888"), (sb, "regressed", "#c0392b")):
    x = s["ts"].dt.replace_time_zone(None).to_list()
    ax1.step(x, s["p50_ms"].to_list(), where="post", label=f"{label} p50", color=colour)
    ax2.step(x, s["errors_5xx"].to_list(), where="post", label=label, color=colour)
ax1.set_ylabel("p50 ms")
ax2.set_ylabel("5xx per 10 s")
ax2.set_xlabel("UTC")
ax1.legend(frameon=False, fontsize=8)
ax1.set_title("shop/api -> shop/catalog")
plt.show()

# %%
joined = sa.join(sb, on="ts", suffix="_new").with_columns(ratio=pl.col("p50_ms_new") / pl.col("p50_ms"))
slow = joined.filter(pl.col("ratio") > 3)["ts"]
errs = joined.filter(pl.col("errors_5xx_new") > pl.col("errors_5xx") + 3)["ts"]
print("slower than baseline x3:", slow.min(), "..", slow.max())
print("more 5xx than baseline:", errs.min(), "..", errs.max())
assert slow.max() < errs.min()  # two episodes: first slow, then failing

# %% [markdown]
# Two separate episodes on one edge: first slow (median about five times the baseline's), then,
# with normal latency, failing.
#
# ## 3. DNS
#
# Failures that are not search-path noise, per rcode:

# %%
def real_failures(t):
    return t.report.dns_failures().filter(~pl.col("search_path")).group_by("rcode_name").agg(pl.col("failures").sum()).sort("rcode_name")


dns = real_failures(base).join(real_failures(new), on="rcode_name", how="full", suffix="_new", coalesce=True).fill_null(0)
dns

# %%
servfail = dns.filter(pl.col("rcode_name") == "SERVFAIL")
assert servfail["failures"][0] == 0 and servfail["failures_new"][0] > 100
window = new.report.dns_failures().filter(pl.col("rcode_name") == "SERVFAIL").select(pl.col("first_seen").min(), pl.col("last_seen").max())
print("SERVFAIL only in the regressed tape, between", window.row(0))

# %% [markdown]
# The baseline has no SERVFAIL at all; the regressed run has a storm of them in one half-minute.
#
# ## 4. Where the bytes went
#
# Same load, so the same bytes in total — but are they placed the same?

# %%
def by_kind(t):
    return t.report.zone_pairs().group_by("kind").agg(pl.col("bytes").sum(), pl.col("cost_usd_month").sum())


placement = by_kind(base).join(by_kind(new), on="kind", suffix="_new").with_columns(change=pl.col("bytes_new") / pl.col("bytes") - 1).sort("kind")
placement

# %%
cz = placement.filter(pl.col("kind") == "cross_zone").row(0, named=True)
assert cz["bytes_new"] > cz["bytes"]
print(f"cross-zone bytes {cz['change']:+.0%} ({cz['bytes'] / 1e6:.1f} -> {cz['bytes_new'] / 1e6:.1f} MB)")

# %% [markdown]
# More bytes cross zones in the regressed run (notebook 02 shows why: an api rollout placed every
# api pod in one zone).
#
# ## Summary of the regression
#
# | what | baseline | regressed |
# |---|---|---|
# | new external destination | — | `telemetry.collect-metrics.io` from `shop/search` |
# | `api -> catalog` latency | steady | median about x5 for 30 s |
# | `api -> catalog` 5xx | a few | a burst right after |
# | DNS SERVFAIL | none | a storm in one half-minute |
# | cross-zone bytes | lower | higher after an api rollout |
