"""README.txt of an export: what is in it and how to check it with standard tools, es and en."""

from __future__ import annotations

from datetime import datetime

from mailer.store.db import iso

_EN = """\
EVIDENCE EXPORT — {creditor}
Created {created} (UTC) by mailer, which sent the reminders below from the creditor's own mailboxes.
Cases: {cases}

WHAT IS HERE
  case-N/report-LANG.html, .pdf  The case explained for a reader new to it: parties, invoices,
                                 payments, interest worked out, and a timeline of every step.
  case-N/emails/*.eml            Every email sent and received, byte for byte as it went out or
                                 came in, all headers included. Opens in any mail program.
  case-N/ledger/*.csv            Invoices, payments, and the interest computation by period.
  case-N/events.jsonl            The case's entries in mailer's event log, one JSON object a line.
  chain/segment.csv              The event chain from this export's first event to a time-stamped
                                 head: id, prev_hash, body_sha256, hash (other cases' contents are
                                 withheld; their hashes keep the chain checkable).
  timestamps/                    RFC 3161 time-stamp tokens (.tsr) on chain heads, the exact text
                                 stamped (.txt), and the time-stamping authority's CA certificate.
  manifest.json                  Every file with its SHA-256; the chain segment and time-stamps.
  manifest.tsr                   An RFC 3161 token on manifest.json (when a TSA is configured).
  SHA256SUMS                     The same hashes, in the format of sha256sum.

HOW TO CHECK IT (standard tools only)
  1. No file has changed:
       sha256sum -c SHA256SUMS
  2. The manifest existed at the time stamped (if manifest.tsr is present):
       openssl ts -verify -data manifest.json -in manifest.tsr -CAfile timestamps/tsa-ca.pem
  3. Each chain head existed at the time stamped, for every timestamps/head-N.tsr:
       openssl ts -verify -data timestamps/head-N.txt -in timestamps/head-N.tsr \\
           -CAfile timestamps/tsa-ca.pem
     head-N.txt holds the hash of event N: it must equal the "hash" of id N in chain/segment.csv.
  4. The chain holds: on each line of chain/segment.csv, hash is the SHA-256 of the text
     prev_hash, a newline, body_sha256; and prev_hash is the hash of the line before:
       tail -n +2 chain/segment.csv | while IFS=, read -r id prev body hash; do
         [ "$(printf '%s\\n%s' "$prev" "$body" | sha256sum | cut -c1-64)" = "$hash" ] \\
           || echo "break at event $id"; done
     For each line of case-N/events.jsonl, body_sha256 is the SHA-256 of its "body" (UTF-8),
     and the same id in chain/segment.csv has the same body_sha256 and hash. Because each hash
     covers the one before, a time-stamp on a head vouches for every event before it.
  Events marked "redacted_by" had their content erased by a recorded retention purge; their
  hashes, and so the chain, are unchanged.
"""

_ES = """\
EXPORTACIÓN DE PRUEBAS — {creditor}
Creada el {created} (UTC) por mailer, que envió los recordatorios desde los buzones del acreedor.
Expedientes: {cases}

CONTENIDO
  case-N/report-IDIOMA.html, .pdf  El expediente explicado: partes, facturas, pagos, intereses
                                   calculados y la cronología de cada paso.
  case-N/emails/*.eml              Cada correo enviado y recibido, byte a byte, con todas sus
                                   cabeceras. Se abre con cualquier programa de correo.
  case-N/ledger/*.csv              Facturas, pagos y el cálculo de intereses por periodos.
  case-N/events.jsonl              Los eventos del expediente, un objeto JSON por línea.
  chain/segment.csv                La cadena de eventos hasta una cabeza con sello de tiempo.
  timestamps/                      Sellos de tiempo RFC 3161 (.tsr), el texto sellado (.txt) y el
                                   certificado de la autoridad de sellado.
  manifest.json, manifest.tsr      La lista de archivos con su SHA-256, y su sello de tiempo.
  SHA256SUMS                       Los mismos hashes, en el formato de sha256sum.

CÓMO COMPROBARLO (solo herramientas estándar)
  1. Ningún archivo ha cambiado:   sha256sum -c SHA256SUMS
  2. Sello del manifiesto:         openssl ts -verify -data manifest.json -in manifest.tsr \\
                                       -CAfile timestamps/tsa-ca.pem
  3. Sello de cada cabeza N:       openssl ts -verify -data timestamps/head-N.txt \\
                                       -in timestamps/head-N.tsr -CAfile timestamps/tsa-ca.pem
  4. La cadena: en cada línea de chain/segment.csv, hash = SHA-256 del texto prev_hash, salto
     de línea, body_sha256; y prev_hash es el hash de la línea anterior (ver el punto 4 en
     inglés para una orden de shell). Cada hash cubre el anterior: un sello sobre una cabeza
     prueba la existencia de todos los eventos anteriores en esa fecha.
"""


def readme(creditor: str, cases: list[int], created: datetime) -> str:
    listed = ", ".join(map(str, cases[:50])) + (f" … ({len(cases)})" if len(cases) > 50 else "")
    values = {"creditor": creditor, "created": iso(created), "cases": listed}
    return _EN.format(**values) + "\n" + "-" * 78 + "\n\n" + _ES.format(**values)
