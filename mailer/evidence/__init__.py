"""Evidence: verify the record, time-stamp the chain, export a case for a lawyer, retention."""
