"""The report's words in Spanish and English: headings, and one sentence per kind of event."""

from __future__ import annotations

LANGS = ("es", "en")

LABELS: dict[str, dict[str, str]] = {
    "es": {
        "title": "Expediente de reclamación de deuda",
        "case": "Expediente",
        "generated": "Informe generado el",
        "intro": (
            "Este informe resume, en orden cronológico, todas las comunicaciones y decisiones "
            "registradas en la reclamación extrajudicial de la deuda descrita abajo. Cada correo "
            "enviado y recibido se adjunta tal cual (archivo .eml, con todas sus cabeceras); cada "
            "hecho procede de un registro encadenado por hashes SHA-256 que permite comprobar que "
            "nada se ha cambiado ni suprimido después. Las horas se indican en la zona horaria del "
            "acreedor ({tz}); en events.jsonl, en UTC."
        ),
        "parties": "Partes",
        "creditor": "Acreedor",
        "debtor": "Deudor",
        "tax_id": "NIF",
        "address": "Domicilio",
        "kind": "Tipo",
        "business": "empresa o profesional",
        "consumer": "consumidor",
        "emails": "Direcciones de correo",
        "status": "Estado del expediente",
        "opened": "abierto el",
        "closed": "cerrado el",
        "blocked": "Datos bloqueados (LOPDGDD art. 32) desde",
        "invoices": "Facturas y pagos",
        "number": "Factura",
        "issued": "Emitida",
        "due": "Vencimiento",
        "amount": "Importe",
        "paid": "Pagado",
        "balance": "Pendiente",
        "days": "Días de retraso",
        "interest": "Intereses",
        "compensation": "Indemnización",
        "total": "Total",
        "payments": "Pagos recibidos",
        "date": "Fecha",
        "reference": "Referencia",
        "no_payments": "No consta ningún pago.",
        "computation": "Cálculo de intereses",
        "computation_intro": (
            "Intereses simples sobre el importe pendiente (IVA incluido) desde el día siguiente "
            "al vencimiento hasta el {until} o hasta el pago, ambos incluidos: principal × tipo "
            "anual × días / 365. Base legal: {basis}. Para deudores que son empresas, además, "
            "40 € por factura pagada con retraso (Ley 3/2004, art. 8)."
        ),
        "from": "Desde",
        "to": "Hasta",
        "principal": "Principal",
        "rate": "Tipo anual",
        "provisional": "tipo provisional: el oficial de ese semestre aún no estaba publicado",
        "timeline": "Cronología",
        "when": "Fecha y hora",
        "what": "Hecho",
        "evidence": "Prueba",
        "verify": "Cómo comprobarlo",
        "verify_text": (
            "El archivo SHA256SUMS contiene el hash SHA-256 de cada archivo de esta exportación: "
            "«sha256sum -c SHA256SUMS» confirma que ninguno ha cambiado. La cadena de eventos y "
            "sus sellos de tiempo (RFC 3161) se comprueban como explica README.txt."
        ),
        "event": "evento",
        "none": "—",
    },
    "en": {
        "title": "Debt collection case file",
        "case": "Case",
        "generated": "Report generated on",
        "intro": (
            "This report sets out, in order, every communication and decision recorded while the "
            "debt described below was claimed out of court. Each email sent and received is "
            "attached exactly as it was (an .eml file with all its headers); each fact comes from a "
            "log chained with SHA-256 hashes, which shows that nothing was changed or removed "
            "afterwards. Times are in the creditor's time zone ({tz}); in events.jsonl, in UTC."
        ),
        "parties": "Parties",
        "creditor": "Creditor",
        "debtor": "Debtor",
        "tax_id": "Tax ID",
        "address": "Address",
        "kind": "Kind",
        "business": "business or professional",
        "consumer": "consumer",
        "emails": "Email addresses",
        "status": "Case status",
        "opened": "opened on",
        "closed": "closed on",
        "blocked": "Data blocked (LOPDGDD art. 32) since",
        "invoices": "Invoices and payments",
        "number": "Invoice",
        "issued": "Issued",
        "due": "Due",
        "amount": "Amount",
        "paid": "Paid",
        "balance": "Outstanding",
        "days": "Days late",
        "interest": "Interest",
        "compensation": "Compensation",
        "total": "Total",
        "payments": "Payments received",
        "date": "Date",
        "reference": "Reference",
        "no_payments": "No payment recorded.",
        "computation": "How the interest is computed",
        "computation_intro": (
            "Simple interest on the outstanding amount (VAT included) from the day after the due "
            "date to {until} or to the payment, both included: principal × annual rate × days / "
            "365. Legal basis: {basis}. Business debtors also owe EUR 40 per invoice paid late "
            "(Spanish Ley 3/2004, art. 8; Directive 2011/7/EU, art. 6)."
        ),
        "from": "From",
        "to": "To",
        "principal": "Principal",
        "rate": "Annual rate",
        "provisional": "provisional rate: that half-year's official rate was not yet published",
        "timeline": "Timeline",
        "when": "Date and time",
        "what": "What happened",
        "evidence": "Evidence",
        "verify": "How to check it",
        "verify_text": (
            "SHA256SUMS holds the SHA-256 hash of every file in this export: "
            "`sha256sum -c SHA256SUMS` confirms none has changed. The event chain and its "
            "RFC 3161 time-stamps are checked as README.txt explains."
        ),
        "event": "event",
        "none": "—",
    },
}

STATUS: dict[str, dict[str, str]] = {
    "es": {
        "active": "en curso", "paused": "en pausa", "review": "pendiente de revisión",
        "resolved": "pagado", "handed_over": "entregado a agencia o juzgado", "stopped": "detenido",
    },
    "en": {
        "active": "active", "paused": "paused", "review": "awaiting review", "resolved": "paid",
        "handed_over": "handed over to an agency or court", "stopped": "stopped",
    },
}  # fmt: skip

# One sentence per kind of event; {names} come from the event's data and the message it concerns.
EVENTS: dict[str, dict[str, str]] = {
    "es": {
        "debtor_added": "Alta del deudor «{name}» en el registro de clientes.",
        "debtor_changed": "Cambian los datos del deudor: {changes}.",
        "contact_added": "Se registra la dirección de correo {address}.",
        "contact_removed": "Se retira la dirección de correo {address}.",
        "invoice_added": "Se registra la factura {number} de {amount}, vencimiento {due_date}.",
        "invoice_changed": "Cambia la factura {number}: {changes}.",
        "payment_recorded": "Pago de {amount} a la factura {invoice}, fecha {paid_on}.",
        "case_opened": "Se abre el expediente; importe pendiente {balance}.",
        "case_resolved": "Se cierra el expediente: deuda pagada en su totalidad.",
        "case_paused": "Se pausa el envío de recordatorios hasta {until}: {reason}.",
        "case_review": "El expediente pasa a revisión por una persona: {reason}.",
        "case_active": "Se reanudan los recordatorios ({reason}).",
        "case_resumed": "Se reanudan los recordatorios ({reason}).",
        "case_stopped": "Se detienen los envíos automáticos: {reason}.",
        "case_handed_over": "Se entrega la reclamación a una agencia o juzgado: {reason}.",
        "case_error": "Error interno al planificar el expediente: {error}.",
        "case_blocked": "Datos bloqueados (LOPDGDD art. 32); supresión prevista el {purge_on}.",
        "retention_purged": "Supresión de los datos personales del expediente ({reason}).",
        "message_queued": "Se prepara el correo «{subject}» para {recipients}.",
        "message_awaiting_approval": "El correo «{subject}» espera aprobación de una persona.",
        "message_approved": "{by} aprueba el envío del correo «{subject}».",
        "message_sent": "Enviado el correo «{subject}» a {recipients}; el servidor de correo lo acepta: {receipt}.",
        "sent_copy_filed": "Copia del correo «{subject}» archivada en la carpeta de enviados.",
        "send_deferred": "Envío aplazado por un error temporal: {error}.",
        "send_refused": "El servidor rechaza el correo «{subject}»: {refusals}.",
        "send_failed": "El envío del correo «{subject}» falla: {error}.",
        "send_expired": "Se abandona el envío del correo «{subject}» tras reintentos.",
        "recipient_refused": "El servidor rechaza la dirección {address}: {code} {text}.",
        "message_cancelled": "Se cancela el correo «{subject}» antes de enviarlo.",
        "message_resend_planned": "Se reenvía el mismo recordatorio a {to}: {why}.",
        "mail_received": "Recibido un correo de {from_address} («{mail_subject}»): {what}.",
        "mail_quarantined": "Recibido un correo sobre el expediente que no se pudo leer: {error}.",
        "review_opened": "Se pide a una persona que lo revise: {reason}.",
        "contact_status": "La dirección {address} pasa a «{status}»: {reason}.",
        "soft_bounce": "Aviso de no entrega temporal para {address}.",
        "mail_noted": "Nota: {note}.",
        "evidence_exported": "Exportación de pruebas ({file}).",
        "chain_timestamped": "Sello de tiempo RFC 3161 de la cadena de eventos ({tsa_name}, {gen_time}).",
        "blocking_verdict": "Valoración de la entrega desde {identity} a {address}: {verdict} ({why}).",
        "identity_switched": "Se sigue escribiendo desde otra dirección propia del acreedor ({to}) en lugar de {from}: {why}.",
        "identity_problem": "La dirección remitente {identity} es rechazada por muchos dominios: {why}.",
        "engagement": "{address} abre o pulsa un enlace del correo enviado por Mailchimp ({source}).",
        "mailchimp_campaign_sent": "Mailchimp envía la campaña {campaign_id} ({emails_sent} destinatario).",
        "mailchimp_schedule_unavailable": "El plan de Mailchimp no permite programar envíos: se envía en el momento.",
        "mailchimp_bounce": "Mailchimp informa de un rebote ({type}) para {address}.",
        "mailchimp_member": "Mailchimp indica que {address} pasa a «{status}».",
        "mailchimp_abuse": "{address} denuncia el correo como spam en Mailchimp.",
        "mailchimp_fallback": "Mailchimp no puede enviarlo; se envía el mismo correo por SMTP: {why}.",
    },
    "en": {
        "debtor_added": "Debtor “{name}” added to the client records.",
        "debtor_changed": "The debtor's details change: {changes}.",
        "contact_added": "Email address {address} recorded.",
        "contact_removed": "Email address {address} removed.",
        "invoice_added": "Invoice {number} recorded: {amount}, due {due_date}.",
        "invoice_changed": "Invoice {number} changed: {changes}.",
        "payment_recorded": "Payment of {amount} on invoice {invoice}, dated {paid_on}.",
        "case_opened": "Case opened; amount outstanding {balance}.",
        "case_resolved": "Case closed: the debt is paid in full.",
        "case_paused": "Reminders paused until {until}: {reason}.",
        "case_review": "The case goes to a person for review: {reason}.",
        "case_active": "Reminders resume ({reason}).",
        "case_resumed": "Reminders resume ({reason}).",
        "case_stopped": "Automatic emails stopped: {reason}.",
        "case_handed_over": "The claim is handed over to an agency or court: {reason}.",
        "case_error": "Internal error while planning the case: {error}.",
        "case_blocked": "Data blocked (LOPDGDD art. 32); erasure due on {purge_on}.",
        "retention_purged": "The case's personal data erased ({reason}).",
        "message_queued": "Email “{subject}” prepared for {recipients}.",
        "message_awaiting_approval": "Email “{subject}” awaits a person's approval.",
        "message_approved": "{by} approves sending the email “{subject}”.",
        "message_sent": "Email “{subject}” sent to {recipients}; the mail server accepts it: {receipt}.",
        "sent_copy_filed": "Copy of the email “{subject}” filed in the Sent folder.",
        "send_deferred": "Sending postponed by a temporary error: {error}.",
        "send_refused": "The mail server refuses the email “{subject}”: {refusals}.",
        "send_failed": "Sending the email “{subject}” fails: {error}.",
        "send_expired": "Sending the email “{subject}” given up after retries.",
        "recipient_refused": "The mail server refuses the address {address}: {code} {text}.",
        "message_cancelled": "Email “{subject}” cancelled before it was sent.",
        "message_resend_planned": "The same reminder is sent again to {to}: {why}.",
        "mail_received": "Email received from {from_address} (“{mail_subject}”): {what}.",
        "mail_quarantined": "An email about the case arrived that could not be read: {error}.",
        "review_opened": "A person is asked to review it: {reason}.",
        "contact_status": "Address {address} becomes “{status}”: {reason}.",
        "soft_bounce": "Temporary delivery failure notice for {address}.",
        "mail_noted": "Note: {note}.",
        "evidence_exported": "Evidence exported ({file}).",
        "chain_timestamped": "RFC 3161 time-stamp of the event chain ({tsa_name}, {gen_time}).",
        "blocking_verdict": "Delivery from {identity} to {address} assessed: {verdict} ({why}).",
        "identity_switched": "Emails continue from another of the creditor's own addresses ({to}) instead of {from}: {why}.",
        "identity_problem": "The sending address {identity} is refused by many domains: {why}.",
        "engagement": "{address} opens the email sent through Mailchimp or clicks a link in it ({source}).",
        "mailchimp_campaign_sent": "Mailchimp sends campaign {campaign_id} ({emails_sent} recipient).",
        "mailchimp_schedule_unavailable": "The Mailchimp plan cannot schedule sends: sent at once.",
        "mailchimp_bounce": "Mailchimp reports a bounce ({type}) for {address}.",
        "mailchimp_member": "Mailchimp reports that {address} is now “{status}”.",
        "mailchimp_abuse": "{address} reports the email as spam in Mailchimp.",
        "mailchimp_fallback": "Mailchimp cannot send it; the same email goes by SMTP: {why}.",
    },
}

FALLBACK = {"es": "Evento «{kind}».", "en": "Event “{kind}”."}
REDACTED = {"es": "Contenido suprimido (retención).", "en": "Content erased (retention)."}

# What an incoming mail was found to be, for "mail_received".
MAIL_KIND: dict[str, dict[str, str]] = {
    "es": {
        "human_reply": "respuesta de una persona", "autoreply": "respuesta automática",
        "bounce": "aviso de no entrega", "delivered": "confirmación de entrega",
        "feedback": "queja de un proveedor de correo", "other": "otro",
    },
    "en": {
        "human_reply": "a person's reply", "autoreply": "an automatic reply",
        "bounce": "a delivery failure notice", "delivered": "a delivery confirmation",
        "feedback": "a mailbox provider's complaint", "other": "other",
    },
}  # fmt: skip
INTENT: dict[str, dict[str, str]] = {
    "es": {
        "promise_to_pay": "promete pagar", "paid_already": "dice haber pagado",
        "dispute": "discute la deuda", "hardship": "pide más plazo o pagos a plazos",
        "stop_contact": "pide que no se le escriba más", "other": "pregunta u otro asunto",
    },
    "en": {
        "promise_to_pay": "promises to pay", "paid_already": "says it has paid",
        "dispute": "disputes the debt", "hardship": "asks for more time or instalments",
        "stop_contact": "asks not to be written to", "other": "a question or other matter",
    },
}  # fmt: skip

# The blocking assessment's verdicts (mailer.domain.blocking.Level).
VERDICT: dict[str, dict[str, str]] = {
    "es": {
        "ok": "sin problemas",
        "suspect": "posible bloqueo",
        "likely_blocked": "bloqueo probable",
    },
    "en": {"ok": "no problem", "suspect": "possibly blocked", "likely_blocked": "likely blocked"},
}

# Steps of sending that the timeline folds into the "sent" line (they stay in events.jsonl).
QUIET = frozenset(
    {
        "send_attempt", "send_released", "held_for_window", "case_unchanged", "ledger_import", "message_queued",
        "sent_copy_filed", "mailchimp_api",
    }
)  # fmt: skip
COPY_FILED = {
    "es": " Copia archivada en la carpeta de enviados del buzón.",
    "en": " A copy is filed in the mailbox's Sent folder.",
}
