"""bench/scale.py's code path on 300 debtors: counts, the event chain and a plan for every case."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scale_path_imports_and_plans_every_case(tmp_path: Path) -> None:
    scale = load_bench()
    csv_path, db_path = tmp_path / "invoices.csv", tmp_path / "mailer.db"
    assert scale.write_ledger(csv_path, 300, 3) == 900

    imported = scale.run_import(csv_path, db_path)
    assert imported["added"] == 900
    assert imported["cases_opened"] == 300
    counts = imported["counts"]
    assert (counts["debtors"], counts["invoices"], counts["cases"]) == (300, 900, 300)
    # One summary, then one per debtor, invoice and case: every addition is in the chain.
    assert counts["events"] == 1 + 300 + 900 + 300
    assert imported["chain_ok"]

    planned = scale.run_plan(db_path)
    assert planned["planned"] == 300
    assert sum(planned["actions"].values()) == 300

    floor = scale.run_import_floor(csv_path, tmp_path / "floor.db")
    assert floor["rows"] == 900
    assert scale.run_load_floor(db_path)["rows"] >= 300 + 900
