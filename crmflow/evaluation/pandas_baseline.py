"""The seeds' batch script, measured on the same generated data as a benchmark, as the ratio's baseline.

The seeds transform a legacy export with pandas: merge first and last name, convert the sales amount, parse
the ticket date, write a CSV. No cleansing, no validation, no Kafka, no database: it is the floor of what a
migration costs, not a competitor. ``crmflow bench`` runs it alongside when pandas is installed
(``pip install -e '.[eval]'``) and reports rows/s.

    python -m crmflow.evaluation.pandas_baseline DATA_DIR
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def measure(data: Path) -> dict[str, Any] | None:
    """Rows/s of the seeds' pandas transformation over the four CSV files in ``data``; None without pandas."""
    try:
        import pandas as pd
    except ImportError:
        return None
    rates = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27, "CAD": 0.73}
    started = time.perf_counter()
    rows = 0
    with tempfile.TemporaryDirectory() as out:
        customers = pd.read_csv(data / "customers.csv", dtype=str, encoding_errors="replace", on_bad_lines="skip")
        customers["Full_Name"] = customers["First_Name"] + " " + customers["Last_Name"]
        customers.to_csv(Path(out) / "customers.csv", index=False)
        rows += len(customers)
        sales = pd.read_csv(data / "sales.csv", dtype=str, encoding_errors="replace", on_bad_lines="skip")
        amount = pd.to_numeric(sales.get("Sales_Amount"), errors="coerce")
        currency = sales["Currency"] if "Currency" in sales.columns else pd.Series("USD", index=sales.index)
        sales["Total_Sales"] = amount * currency.map(rates).fillna(1.0)
        sales.to_csv(Path(out) / "sales.csv", index=False)
        rows += len(sales)
        for name in ("tickets", "contacts"):
            frame = pd.read_csv(data / f"{name}.csv", dtype=str, encoding_errors="replace", on_bad_lines="skip")
            date_col = next((c for c in frame.columns if "Date" in c), None)
            if date_col is not None:
                frame["Parsed_Date"] = pd.to_datetime(frame[date_col], format="%m/%d/%Y", errors="coerce")
            frame.to_csv(Path(out) / f"{name}.csv", index=False)
            rows += len(frame)
    elapsed = time.perf_counter() - started
    return {"rows": rows, "elapsed_s": round(elapsed, 2), "rows_per_second": round(rows / elapsed, 1)}


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]))))
