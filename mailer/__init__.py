"""mailer: chases unpaid invoices from a small business's own mailboxes."""

__version__ = "0.1.0"
