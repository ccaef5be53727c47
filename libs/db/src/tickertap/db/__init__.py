"""Async SQLAlchemy engines on Vault-issued credentials, a unit of work, a reader engine, bounded retries."""
