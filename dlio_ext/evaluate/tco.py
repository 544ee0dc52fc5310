"""What a store costs, from the prices its target gives and the figures the suite measured.

Every figure is a dict holding its value, its unit, its formula as text and the inputs the formula
was applied to, so the page shows how it was reached and a reader (or a test) can redo it. A figure
whose inputs are missing is not computed: `not_priced` says which prices it needs. A target
without prices gets no costs at all (`cost_figures` returns None).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HOURS_PER_MONTH = 730.0  # 8,760 h / 12
HOURS_PER_DAY = 24.0
TIB_PER_TB = 1e12 / 2**40
#: MLCommons' example MTTF of one accelerator, as checkpoint_burst's goodput uses it
ACCELERATOR_MTTF_HOURS = 50_000.0

Figure = dict[str, Any]


def figure(value: float, unit: str, formula: str, inputs: Mapping[str, Any]) -> Figure:
    return {"value": round(value, 6), "unit": unit, "formula": formula, "inputs": dict(inputs)}


def monthly_cost(prices: Mapping[str, float]) -> Figure | None:
    """The store's cost per month: each part whose prices are given (capacity, fixed, power, rack)."""
    parts: dict[str, float] = {}
    terms: list[str] = []
    if "usd_per_tb_month" in prices and "capacity_tb" in prices:
        parts["capacity"] = prices["usd_per_tb_month"] * prices["capacity_tb"]
        terms.append("usd_per_tb_month x capacity_tb")
    if "fixed_usd_per_month" in prices:
        parts["fixed"] = prices["fixed_usd_per_month"]
        terms.append("fixed_usd_per_month")
    if "power_w" in prices and "usd_per_kwh" in prices:
        parts["power"] = prices["power_w"] / 1000 * HOURS_PER_MONTH * prices["usd_per_kwh"]
        terms.append(f"power_w / 1000 x {HOURS_PER_MONTH:g} h x usd_per_kwh")
    if "rack_units" in prices and "usd_per_rack_unit_month" in prices:
        parts["rack"] = prices["rack_units"] * prices["usd_per_rack_unit_month"]
        terms.append("rack_units x usd_per_rack_unit_month")
    if not parts:
        return None
    used = {k: prices[k] for k in prices if any(k in t for t in terms)}
    out = figure(sum(parts.values()), "$/month", " + ".join(terms), used)
    out["parts"] = {k: round(v, 6) for k, v in parts.items()}
    return out


def per_gbps(monthly: Figure, gbps: float, direction: str, source: str) -> Figure | None:
    """$ per GB/s of measured throughput, a month: what one GB/s of this store costs."""
    if gbps <= 0:
        return None
    return figure(
        monthly["value"] / gbps,
        f"$/month per GB/s {direction}",
        f"monthly_usd / measured {direction} GB/s",
        {"monthly_usd": monthly["value"], f"{direction}_GBps": gbps, "measured_by": source},
    )


def per_usable_tib(monthly: Figure, capacity_tb: float) -> Figure:
    tib = capacity_tb * TIB_PER_TB
    return figure(
        monthly["value"] / tib,
        "$/month per usable TiB",
        "monthly_usd / (capacity_tb x 1e12 / 2^40)",
        {"monthly_usd": monthly["value"], "capacity_tb": capacity_tb, "usable_tib": round(tib, 6)},
    )


def checkpoint_stalls(
    checkpoint_s: float, gpus: float, usd_per_gpu_hour: float, mtbf_hours: float | None, source: str
) -> Figure:
    """$ a day that GPUs spend waiting for checkpoints, checkpointing at Daly's optimal interval
    for this checkpoint time and MTBF (the same formula checkpoint_burst's goodput uses)."""
    from dlio_ext.workloads.checkpoint_burst.summary import goodput

    mtbf = mtbf_hours if mtbf_hours else ACCELERATOR_MTTF_HOURS / gpus
    interval = goodput(checkpoint_s, 0.0, mtbf * 3600)["daly_interval_s"]
    stall = checkpoint_s / (interval + checkpoint_s) if interval + checkpoint_s > 0 else 0.0
    idle = stall * gpus * HOURS_PER_DAY
    inputs = {
        "checkpoint_s": checkpoint_s,
        "measured_by": source,
        "mtbf_hours": round(mtbf, 6),
        "mtbf_source": "prices.mtbf_hours" if mtbf_hours else f"{ACCELERATOR_MTTF_HOURS:g} h / gpus",
        "daly_interval_s": interval,
        "stall_fraction": round(stall, 9),
        "gpus": gpus,
        "idle_gpu_hours_per_day": round(idle, 6),
        "usd_per_gpu_hour": usd_per_gpu_hour,
    }
    return figure(
        idle * usd_per_gpu_hour,
        "$/day",
        "stall_fraction x gpus x 24 h x usd_per_gpu_hour, stall_fraction = checkpoint_s / "
        "(daly_interval_s + checkpoint_s), daly_interval_s = Daly(checkpoint_s, mtbf_hours)",
        inputs,
    )


def cost_figures(
    prices: Mapping[str, float], measured: Mapping[str, tuple[float, str]]
) -> dict[str, Any] | None:
    """The target's cost figures; `measured` maps read_GBps, write_GBps and checkpoint_s to
    (value, where it was measured). None when the target gives no prices."""
    if not prices:
        return None
    figures: dict[str, Figure] = {}
    missing: dict[str, str] = {}
    monthly = monthly_cost(prices)
    if monthly is None:
        missing["monthly_usd"] = (
            "needs usd_per_tb_month with capacity_tb, fixed_usd_per_month, power_w with usd_per_kwh, "
            "or rack_units with usd_per_rack_unit_month"
        )
        for key in ("usd_per_GBps_read", "usd_per_GBps_write", "usd_per_usable_tib_month"):
            missing[key] = "needs a monthly cost (monthly_usd)"
    else:
        figures["monthly_usd"] = monthly
        for direction in ("read", "write"):
            key = f"usd_per_GBps_{direction}"
            got = measured.get(f"{direction}_GBps")
            made = per_gbps(monthly, got[0], direction, got[1]) if got else None
            if made is None:
                missing[key] = f"no {direction} GB/s was measured (the large_objects run)"
            else:
                figures[key] = made
        if "capacity_tb" in prices:
            figures["usd_per_usable_tib_month"] = per_usable_tib(monthly, prices["capacity_tb"])
        else:
            missing["usd_per_usable_tib_month"] = "needs capacity_tb"
    if "gpus" in prices and "usd_per_gpu_hour" in prices:
        got = measured.get("checkpoint_s")
        if got is None:
            missing["checkpoint_stall_usd_per_day"] = "no checkpoint burst was measured (the checkpoint run)"
        else:
            figures["checkpoint_stall_usd_per_day"] = checkpoint_stalls(
                got[0], prices["gpus"], prices["usd_per_gpu_hour"], prices.get("mtbf_hours"), got[1]
            )
    else:
        missing["checkpoint_stall_usd_per_day"] = "needs gpus and usd_per_gpu_hour"
    return {"prices": dict(prices), "figures": figures, "not_priced": missing}
