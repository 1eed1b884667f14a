"""Who may do what: keys with grants on collections, per-key limits, the audit trail (README: Security)."""
