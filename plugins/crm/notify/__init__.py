"""Notifications: the run summary e-mail (the ledger, channels and templates build on this)."""
