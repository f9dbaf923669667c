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
# # Cross-zone traffic and what it costs per month
#
# Clouds charge for bytes that cross an availability zone (AWS: $0.01/GB each way) and for
# internet egress. This notebook finds how much of the cluster's traffic in
# `fixtures/synth-incident.tape` crossed zones, who sent it, what it would cost per month at
# this rate, and what changed when a rollout put every `api` pod in one zone.

# %%
import datetime as dt

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

import flowtape
from flowtape.analyze.reports.prices import Prices

pl.Config.set_tbl_width_chars(160)
pl.Config.set_tbl_rows(20)

tape = flowtape.open("../fixtures/synth-incident.tape")
start_ns, end_ns = tape.window
seconds = (end_ns - start_ns) / 1e9
MONTH = 30 * 86400
print(f"{seconds:.0f} s of traffic; costs are scaled to 30 days at this rate")

# %% [markdown]
# ## 1. Bytes per zone pair
#
# `tape.report.zone_pairs()` counts flow bytes (IP total length) once per packet, with
# ClusterIPs replaced by the pod behind them, and prices each pair by its kind.

# %%
pairs = tape.report.zone_pairs()
pairs

# %%
kinds = pairs.group_by("kind").agg(pl.col("bytes").sum(), pl.col("cost_usd_month").sum()).sort("bytes", descending=True)
total = pairs["bytes"].sum()
cross = kinds.filter(pl.col("kind") == "cross_zone").row(0, named=True)
print(f"cross-zone: {cross['bytes'] / 1e6:.1f} MB of {total / 1e6:.1f} MB ({cross['bytes'] / total:.1%}), ${cross['cost_usd_month']:.2f} per 30 days")
assert 0.05 < cross["bytes"] / total < 0.5
kinds

# %% [markdown]
# The matrix, rows sending to columns (log colour scale, cells in MB):

# %%
zones = sorted(set(pairs["src_zone"]) | set(pairs["dst_zone"]))
m = np.zeros((len(zones), len(zones)))
for r in pairs.iter_rows(named=True):
    m[zones.index(r["src_zone"]), zones.index(r["dst_zone"])] = r["bytes"]
fig, ax = plt.subplots(figsize=(6, 4.5))
ax.imshow(np.log10(np.maximum(m, 1)), cmap="Blues")
for i in range(len(zones)):
    for j in range(len(zones)):
        if m[i, j]:
            ax.text(j, i, f"{m[i, j] / 1e6:.1f}", ha="center", va="center", fontsize=8)
ax.set_xticks(range(len(zones)), zones, rotation=30, ha="right")
ax.set_yticks(range(len(zones)), zones)
ax.set_xlabel("to")
ax.set_ylabel("from")
ax.set_title("MB per zone pair")
plt.show()

# %% [markdown]
# ## 2. Who sends the cross-zone bytes?
#
# The enriched flow rows name both ends; a LazyFrame keeps it cheap.

# %%
flows = tape.enriched("flows").pl(lazy=True)
is_cross = (pl.col("src_kind").is_in(["pod", "node"]) & pl.col("dst_kind").is_in(["pod", "node"])
            & pl.col("src_zone").is_not_null() & pl.col("dst_zone").is_not_null() & (pl.col("src_zone") != pl.col("dst_zone")))
payers = (flows.filter(is_cross)
               .group_by(src=pl.col("src_namespace") + "/" + pl.col("src_workload"), dst=pl.col("dst_namespace") + "/" + pl.col("dst_workload"))
               .agg(bytes=pl.col("bytes").sum())
               .with_columns(usd_month=pl.col("bytes") / 1e9 * Prices().cross_zone * MONTH / seconds)
               .sort("bytes", descending=True).collect())
payers.head(10)

# %%
assert abs(payers["bytes"].sum() - cross["bytes"]) / cross["bytes"] < 0.02  # the same bytes as the report, pod to pod

# %% [markdown]
# ## 3. Over time: the rollout
#
# The api Deployment rolled out twice in this tape. Cross-zone share per 15 s:

# %%
per_15s = (flows.filter(pl.col("src_zone").is_not_null() & pl.col("dst_zone").is_not_null())
                .sort("ts_start")
                .group_by_dynamic("ts_start", every="15s")
                .agg(total=pl.col("bytes").sum(), cross=pl.col("bytes").filter(is_cross).sum())
                .with_columns(share=pl.col("cross") / pl.col("total"))
                .collect())
api_rollouts = (tape.lazy("k8s_pods").filter(pl.col("workload_name") == "api").group_by("workload_name", rs=pl.col("name").str.replace(r"-[^-]+$", ""))
                    .agg(first=pl.col("valid_from").min()).sort("first").collect())
print(api_rollouts)
fig, ax = plt.subplots(figsize=(9, 3))
ax.step(per_15s["ts_start"].dt.replace_time_zone(None).to_list(), (per_15s["share"] * 100).to_list(), where="post", color="#2f5fb3")
for t in api_rollouts["first"].to_list()[1:]:
    ax.axvline(t.replace(tzinfo=None), color="#c0392b", linestyle="--", linewidth=1)
ax.set_ylabel("% of bytes cross-zone")
ax.set_xlabel("UTC (dashed: a new api ReplicaSet's first pod)")
ax.set_ylim(bottom=0)
plt.show()

# %% [markdown]
# The share steps up at the end, after the second api rollout. Where did the new api pods run?

# %%
last_rs = api_rollouts["rs"].to_list()[-1]
placed = (tape.lazy("k8s_pods").filter(pl.col("name").str.starts_with(last_rs + "-")).select("name", "node_name").unique().collect()
              .join(tape.lazy("k8s_nodes").select(pl.col("name").alias("node_name"), "zone").unique().collect(), on="node_name"))
placed

# %%
assert placed["zone"].n_unique() == 1
step_at = per_15s.filter(pl.col("share") > 1.3 * per_15s["share"].head(10).median())["ts_start"].min()
print("all new api pods in", placed["zone"][0], "; cross-zone share first up at", step_at)

# %% [markdown]
# Every pod of the new api ReplicaSet landed in **one zone**, so frontends in the other zones now
# call api across zones. What does that do to the bill? Compare the rate before and after.

# %%
cut = step_at
before = tape.report.zone_pairs(until=cut)
after = tape.report.zone_pairs(since=cut)


def monthly(df: pl.DataFrame, secs: float) -> float:
    """Cross-zone USD per 30 days at the byte rate of this part of the tape."""
    b = df.filter(pl.col("kind") == "cross_zone")["bytes"].sum()
    return b / secs * MONTH / 1e9 * Prices().cross_zone


secs_before = (cut.timestamp() * 1e9 - start_ns) / 1e9
secs_after = (end_ns - cut.timestamp() * 1e9) / 1e9
cost = pl.DataFrame({"period": ["before", "after"], "seconds": [secs_before, secs_after],
                     "usd_per_30_days": [monthly(before, secs_before), monthly(after, secs_after)]})
cost

# %%
assert cost["usd_per_30_days"][1] > 1.2 * cost["usd_per_30_days"][0]
print(f"cross-zone spend rate up {cost['usd_per_30_days'][1] / cost['usd_per_30_days'][0] - 1:.0%} after the rollout")

# %% [markdown]
# In absolute money this demo cluster is tiny (dollars per month), but the ratio is what
# transfers: the same placement in a cluster moving 100 TB a month changes the cross-zone line
# of the bill in the same proportion. The fix is a topology spread constraint on api, or
# topology-aware routing so frontends prefer api pods in their own zone.
#
# ## 4. Other price lists
#
# Prices are a parameter: say your provider charges $0.02/GB for cross-zone traffic.

# %%
pricier = tape.report.zone_pairs(prices=Prices(cross_zone=0.02))
ratio = pricier.filter(pl.col("kind") == "cross_zone")["cost_usd_month"].sum() / pairs.filter(pl.col("kind") == "cross_zone")["cost_usd_month"].sum()
assert abs(ratio - 2) < 1e-9
print(f"at $0.02/GB: ${pricier.filter(pl.col('kind') == 'cross_zone')['cost_usd_month'].sum():.2f} per 30 days")
