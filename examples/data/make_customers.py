"""Regenerate ``examples/data/customers.csv`` deterministically (seeded): a small churn table.

Churn follows a logistic rule on tenure, monthly charges, plan and age with a wide margin, so a
small MLP reaches > 80 % validation accuracy in a few epochs. Dirty rows are planted on purpose,
so every ingest rule has work to do: exact duplicates, outliers, duplicate keys, nulls, out-of-range ages,
an unknown plan, malformed keys and unparseable numbers written as text.

    python examples/data/make_customers.py [--rows 3000] [--out examples/data/customers.csv]
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np

PLANS = ("basic", "standard", "premium")
REGIONS = ("north", "south", "east", "west")
COLUMNS = ("customer_id", "age", "tenure_months", "monthly_charges", "plan", "region", "churned")


def make_rows(rows: int = 3000, seed: int = 7) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    clean = rows - rows // 20  # ~5 % of the final table are planted dirty rows
    out: list[list[str]] = []
    for i in range(clean):
        plan = PLANS[rng.choice(3, p=[0.45, 0.35, 0.20])]
        region = REGIONS[rng.integers(0, 4)]
        age = int(rng.integers(18, 80))
        tenure = round(float(rng.gamma(2.0, 12.0)), 1)
        charges = round(float(rng.normal({"basic": 35, "standard": 70, "premium": 110}[plan], 15)), 2)
        logit = 2.2 - 0.11 * tenure + 0.035 * (charges - 60) - 0.04 * (age - 45) + {"basic": 0.8, "standard": 0.0,
                                                                                        "premium": -1.2}[plan]
        churned = "yes" if rng.random() < 1 / (1 + math.exp(-2.5 * logit)) else "no"
        out.append([f"C{i:05d}", str(age), f"{tenure}", f"{charges}", plan, region, churned])
    dirty = rows - clean
    originals = [list(r) for r in out]
    for j in range(dirty):
        victim = list(originals[int(rng.integers(0, clean))])
        kind = j % 8
        if kind == 0:
            pass  # exact duplicate
        elif kind == 1:
            victim[3] = str(round(float(victim[3]) * 8 + 400, 2))  # an outlier (clipped by the IQR rule)
            victim[0] = f"C{clean + j:05d}"
        elif kind == 2:
            victim[3] = str(round(float(victim[3]) + 5.0, 2))  # duplicate key, different values
        elif kind == 3:
            victim[2] = ""  # null tenure (filled with the median)
            if j % 16 == 3:
                victim[4] = ""  # null plan (filled with the mode)
            victim[0] = f"C{clean + j:05d}"
        elif kind == 4:
            victim[1] = str(int(rng.choice([-3, 150, 212])))  # age out of range
            victim[0] = f"C{clean + j:05d}"
        elif kind == 5:
            victim[4] = "platinum"  # category not in the contract
            victim[0] = f"C{clean + j:05d}"
        elif kind == 6:
            victim[3] = str(rng.choice(["N/A", "12,50", "seventy"]))  # number as unparseable text
            victim[0] = f"C{clean + j:05d}"
        else:
            victim[0] = f"cust-{j}"  # key breaks the regex
        out.insert(int(rng.integers(0, len(out) + 1)), victim)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("customers.csv"))
    args = parser.parse_args()
    with open(args.out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(make_rows(args.rows, args.seed))


if __name__ == "__main__":
    main()
