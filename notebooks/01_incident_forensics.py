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
# # Incident forensics: "checkout is slow"
#
# Someone reports that *checkout is slow*. The pods involved may be gone by now, but the tape
# `fixtures/synth-incident.tape` recorded five minutes of the cluster's network. We start at the
# user-facing symptom and drill down with the reports and the enriched HTTP rows (Polars
# LazyFrames) to the edge, the pods as they were named at that moment, and the minute it started.
#
# Every claim below is checked by an `assert` against the data, so if the tape changed the
# notebook would fail rather than tell a wrong story.

# %%
import datetime as dt

import matplotlib.pyplot as plt
import polars as pl

import flowtape

pl.Config.set_tbl_width_chars(160)
pl.Config.set_tbl_rows(20)
pl.Config.set_fmt_str_lengths(40)

tape = flowtape.open("../fixtures/synth-incident.tape")
start_ns, end_ns = tape.window
print(tape)
print("window:", pl.from_epoch(pl.Series([start_ns, end_ns]), time_unit="ns").to_list())

# %% [markdown]
# ## 1. The symptom: the edge users hit, and the checkout edge
#
# Who calls whom, and how fast? `tape.report.topology` gives every edge once, named by workload.

# %%
edges = tape.report.topology(by="workload")
edges.select("client", "server", "requests", "errors_5xx", "p50_ms", "p99_ms").head(10)

# %% [markdown]
# Requests enter at `shop/frontend` (called by `shop/loadgen`, our stand-in for users), which calls
# `shop/api`, which calls the backends — among them `shop/checkout`. Over the whole tape, nothing
# about the checkout edge stands out. Time matters more than totals in an incident, so look at
# latency over time for the user-facing edge and the checkout edge.

# %%
watch = [("shop/loadgen", "shop/frontend"), ("shop/frontend", "shop/api"), ("shop/api", "shop/checkout")]
series = tape.report.latency_over_time(edges=watch)  # 10 s buckets for a short tape


def spread(df: pl.DataFrame) -> pl.DataFrame:
    """Per edge: the highest 10 s median against the edge's typical (median) 10 s median."""
    return (df.group_by("client", "server", maintain_order=True)
              .agg(typical_p50_ms=pl.col("p50_ms").median(), worst_p50_ms=pl.col("p50_ms").max())
              .with_columns(worst_over_typical=pl.col("worst_p50_ms") / pl.col("typical_p50_ms")))


symptom = spread(series)
symptom

# %%
assert symptom["worst_over_typical"].max() < 1.5, "the front door or checkout edge moved"

# %% [markdown]
# Neither the front door (`loadgen -> frontend`), nor `frontend -> api`, nor `api -> checkout`
# shows a step: their worst 10-second median is within 1.5x of their usual one. So the
# complaint's name is not where the data points. (In this synthetic tape each edge's latency is
# drawn on its own, so a slow backend does not add to its callers' times the way it would in a
# real call chain; a real tape would show the step upstream too.) Look at every edge instead.

# %% [markdown]
# ## 2. Which edge moved?
#
# Take every in-cluster HTTP edge and compare its worst 10 s median with its typical one.

# %%
all_edges = [tuple(r) for r in edges.filter(pl.col("requests") > 100).select("client", "server").rows()]
everything = tape.report.latency_over_time(edges=all_edges)
moved = spread(everything).sort("worst_over_typical", descending=True)
moved

# %%
culprit = moved.row(0, named=True)
assert (culprit["client"], culprit["server"]) == ("shop/api", "shop/catalog")
assert culprit["worst_over_typical"] > 3 and moved.row(1, named=True)["worst_over_typical"] < 1.6

# %% [markdown]
# One edge stands apart: **`shop/api -> shop/catalog`**, whose median went up about five-fold for a
# while; the next edge barely moves. A picture of the three edges we looked at first, plus this one:

# %%
fig, ax = plt.subplots(figsize=(9, 3.2))
for (c, s), colour in zip(watch + [("shop/api", "shop/catalog")], ["#999999", "#bbbbbb", "#2f5fb3", "#c0392b"]):
    d = everything.vstack(series).unique(["ts", "client", "server"]).filter((pl.col("client") == c) & (pl.col("server") == s)).sort("ts")
    ax.step(d["ts"].dt.replace_time_zone(None).to_list(), d["p50_ms"].to_list(), where="post", label=f"{c} -> {s}", color=colour, linewidth=1.6)
ax.set_ylabel("p50 ms (10 s buckets)")
ax.set_xlabel("UTC")
ax.legend(fontsize=8, frameon=False)
ax.set_title("Median time to first response byte")
plt.show()

# %% [markdown]
# ## 3. When did it start, and when did it end?
#
# Down to the rows: `tape.enriched("http")` names both ends of every exchange as the cluster
# named them at that moment. As a LazyFrame nothing is read until `.collect()`.

# %%
calls = (tape.enriched("http").pl(lazy=True)
         .filter((pl.col("client_workload") == "api") & (pl.col("server_workload") == "catalog") & pl.col("latency_ns").is_not_null()))
per_10s = (calls.sort("ts").group_by_dynamic("ts", every="10s")
                .agg(requests=pl.len(), p50_ms=pl.col("latency_ns").median() / 1e6)
                .collect())
typical = per_10s["p50_ms"].median()
slow = per_10s.filter(pl.col("p50_ms") > 3 * typical)
slow

# %%
first_bucket, last_bucket = slow["ts"].min(), slow["ts"].max()
print("slow 10 s buckets from", first_bucket, "to", last_bucket, "(each 10 s long)")
print("the minute it started:", first_bucket.replace(second=0, microsecond=0))
assert slow.height == 3 and str(first_bucket) == "2024-03-03 02:00:30+00:00" and str(last_bucket) == "2024-03-03 02:00:50+00:00"

# %% [markdown]
# The median of `api -> catalog` was about 11 ms until **02:00:30 UTC**, sat around 50 ms for three
# buckets, and was back to normal from 02:01:00. It started in the minute **02:00**, 30 s into
# the recording. The first slow exchanges, to the nanosecond:

# %%
calls.filter(pl.col("ts") >= first_bucket).sort("ts").select("ts", "client_pod", "server_pod", (pl.col("latency_ns") / 1e6).alias("ms")).head(5).collect()

# %% [markdown]
# ## 4. Which pods?
#
# Is it one bad catalog pod, or all of them? Compare each catalog pod inside the slow window with
# the rest of the tape — and the api pods that were calling.

# %%
window_end = last_bucket + dt.timedelta(seconds=10)
flagged = calls.with_columns(in_window=pl.col("ts").is_between(first_bucket, window_end, closed="left"))
by_server_pod = (flagged.group_by("server_pod", "server_node", "server_zone", "in_window")
                        .agg(requests=pl.len(), p50_ms=pl.col("latency_ns").median() / 1e6)
                        .sort("server_pod", "in_window").collect())
by_server_pod

# %%
inside = by_server_pod.filter(pl.col("in_window"))
outside = by_server_pod.filter(~pl.col("in_window"))
assert inside.height == 3 and inside["p50_ms"].min() > 3 * outside["p50_ms"].max()
print("catalog pods, all slow in the window:", inside["server_pod"].to_list(), "on", sorted(inside["server_node"].to_list()))

# %% [markdown]
# All three catalog pods, on three nodes in three zones, slowed down together: not one sick pod
# or node, but something every catalog replica shares (a dependency, a config push, the code).
# And the callers, by name *as they were then*:

# %%
callers = (flagged.filter(pl.col("in_window")).group_by("client_pod").agg(requests=pl.len(), p50_ms=pl.col("latency_ns").median() / 1e6)
                  .sort("client_pod").collect())
callers

# %%
rs_then = {p.rsplit("-", 1)[0] for p in callers["client_pod"].to_list()}
api_pods_at_end = (tape.lazy("k8s_pods").filter((pl.col("workload_name") == "api") & pl.col("valid_to").is_null())
                       .select("name").collect()["name"].to_list())
print("api ReplicaSet calling during the incident:", rs_then)
print("api pods still running at the end of the tape:", sorted(api_pods_at_end))
assert len(rs_then) == 1 and not set(callers["client_pod"]) & set(api_pods_at_end)

# %% [markdown]
# The calling pods belong to one api ReplicaSet that **no longer exists at the end of the tape**
# (two rollouts replaced it). `kubectl` today would not know these names; the tape does.
#
# ## 5. Are errors part of it?

# %%
errors = (calls.sort("ts").group_by_dynamic("ts", every="10s").agg(requests=pl.len(), errors_5xx=(pl.col("status") >= 500).sum()).collect())
during = errors.filter(pl.col("ts").is_between(first_bucket, last_bucket))
assert during["errors_5xx"].sum() <= 2
burst = errors.filter(pl.col("errors_5xx") > 2)
assert str(burst["ts"].min()) == "2024-03-03 02:01:20+00:00" and str(burst["ts"].max()) == "2024-03-03 02:01:40+00:00"
burst

# %% [markdown]
# Not during the slowdown: at most a stray error then. The table above shows a *separate* later
# episode — catalog answering 5xx between 02:01:20 and 02:01:50 — with normal latency. Two
# different incidents on the same edge, one minute apart.
#
# ## Summary
#
# | question | answer (from the tape) |
# |---|---|
# | symptom | "checkout is slow"; the checkout and front-door edges show no latency step |
# | edge | `shop/api -> shop/catalog`, median about 11 ms -> about 50 ms |
# | when | from 02:00:30 UTC (the minute 02:00) to 02:01:00 UTC |
# | pods | all three `catalog-4ccjwt6rkl-*` pods; callers: the `api-jxtb27pc8n-*` pods, since rolled out |
# | errors | none with the slowdown; a separate 5xx burst from catalog 02:01:20–02:01:50 |
