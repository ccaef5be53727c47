"""tickerTap ledger service: double-entry, multi-asset, idempotent transfers."""
