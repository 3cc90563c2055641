"""A realistic, deterministic ledger generator: the shipped sample, the demo and the benchmarks."""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

SAMPLE_DIR = Path(__file__).parent / "data" / "sample"
INVOICE_COLUMNS = (
    "invoice_number", "debtor_id", "debtor_name", "debtor_emails", "debtor_lang", "debtor_kind",
    "country", "region", "currency", "amount", "issue_date", "due_date", "invoice_pdf",
    "payment_link",
)  # fmt: skip
PAYMENT_COLUMNS = ("invoice_number", "date", "amount", "reference")

_ES_BUSINESS = [
    "Reformas García S.L.", "Construcciones Iberia S.A.", "Talleres Martín S.L.",
    "Distribuciones Levante S.L.", "Hostelería del Sur S.L.", "Clínica Dental Sonrisa S.L.",
    "Panadería Hermanos Ruiz S.C.", "Estudio Arquitectura Norte S.L.P.", "Transportes Navarro S.A.",
    "Gestoría López y Asociados S.L.", "Bodegas Ribera Alta S.A.", "Frutas Canarias S.L.",
    "Imprenta Gráficas Sol S.L.", "Consultoría Vasca S.L.", "Ferretería Central S.L.",
]  # fmt: skip
_ES_PEOPLE = [
    "María Fernández López", "José Antonio Pérez", "Lucía Gómez Sánchez", "Javier Moreno Díaz",
    "Carmen Jiménez Romero", "David Álvarez Torres", "Ana Belén Castro", "Sergio Ortega Rubio",
    "Núria Puig i Vidal", "Iñaki Etxeberria",
]  # fmt: skip
_EN_BUSINESS = [
    "Brightside Media Ltd", "Harbour & Co Consulting", "Northwind Logistics Ltd",
    "Greenleaf Catering Ltd", "Atlantic Software Ltd", "Costa Blanca Rentals S.L.",
]  # fmt: skip
_EN_PEOPLE = [
    "Emma Thompson-Reid",
    "Oliver Hughes",
    "Siobhán Murphy",
    "James O'Connor",
    "Sarah Mitchell",
]
_ES_REGIONS = ["MD", "CT", "AN", "VC", "PV", "CN", "GA", "", ""]


def _slug(name: str) -> str:
    table = str.maketrans("áéíóúñçàèïüÁÉÍÓÚÑ", "aeiouncaeiuAEIOUN")
    words = [w for w in name.translate(table).lower().replace("&", " ").split() if w.isalnum()]
    return "-".join(words[:3]) or "cliente"


def _debtors(count: int, rng: random.Random) -> Iterator[dict[str, str]]:
    for n in range(1, count + 1):
        lang = "es" if rng.random() < 0.7 else "en"
        kind = "business" if rng.random() < 0.6 else "consumer"
        if lang == "es":
            name = rng.choice(_ES_BUSINESS if kind == "business" else _ES_PEOPLE)
            country, region = "ES", rng.choice(_ES_REGIONS)
        else:
            name = rng.choice(_EN_BUSINESS if kind == "business" else _EN_PEOPLE)
            country, region = rng.choice([("GB", ""), ("IE", ""), ("ES", "MD"), ("ES", "AN")])
        slug = _slug(name)
        if kind == "business":
            emails = [
                f"administracion@{slug}.example" if lang == "es" else f"accounts@{slug}.example"
            ]
            if rng.random() < 0.4:
                emails.append(f"{'facturas' if lang == 'es' else 'billing'}@{slug}.example")
        else:
            emails = [f"{slug}.{n}@correo.example"]
            if rng.random() < 0.2:
                emails.append(f"{slug.split('-')[0]}{n}@mail.example")
        yield {
            "debtor_id": f"C{n:06d}",
            "debtor_name": name,
            "debtor_emails": ";".join(emails),
            "debtor_lang": lang,
            "debtor_kind": kind,
            "country": country,
            "region": region,
        }


def generate(
    debtors: int,
    invoices_per_debtor: int,
    start: date,
    seed: int = 2026,
    paid_share: float = 0.15,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Invoice and payment rows: amounts incl. 21 % VAT, 30-day terms, some partly paid."""
    rng = random.Random(seed)
    invoices: list[dict[str, str]] = []
    payments: list[dict[str, str]] = []
    number = 0
    for debtor in _debtors(debtors, rng):
        for _ in range(rng.randint(1, invoices_per_debtor)):
            number += 1
            issued = start + timedelta(days=rng.randint(0, 75))
            net = Decimal(rng.randrange(8000, 480000)) / 100
            amount = (net * Decimal("1.21")).quantize(Decimal("0.01"))
            inv_no = f"F{issued.year}-{number:06d}"
            invoices.append(
                {
                    "invoice_number": inv_no,
                    **debtor,
                    "currency": "EUR",
                    "amount": str(amount),
                    "issue_date": issued.isoformat(),
                    "due_date": (issued + timedelta(days=30)).isoformat(),
                    "invoice_pdf": "",
                    "payment_link": "",
                }
            )
            roll = rng.random()
            if roll < paid_share:
                share = "1" if roll < paid_share / 4 else rng.choice(["0.25", "0.5", "0.3"])
                part = (amount * Decimal(share)).quantize(Decimal("0.01"))
                paid_on = issued + timedelta(days=rng.randint(20, 45))
                payments.append(
                    {
                        "invoice_number": inv_no,
                        "date": paid_on.isoformat(),
                        "amount": str(part),
                        "reference": f"TR{number:07d}",
                    }
                )
    return invoices, payments


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_sample(directory: Path = SAMPLE_DIR) -> tuple[Path, Path]:
    """The shipped sample: 36 debtors, es and en, business and consumer, due January–April 2026."""
    invoices, payments = generate(36, 3, start=date(2025, 12, 1), seed=7, paid_share=0.2)
    inv_path, pay_path = directory / "invoices.csv", directory / "payments.csv"
    write_csv(inv_path, INVOICE_COLUMNS, invoices)
    write_csv(pay_path, PAYMENT_COLUMNS, payments)
    return inv_path, pay_path


if __name__ == "__main__":
    print(*write_sample())
