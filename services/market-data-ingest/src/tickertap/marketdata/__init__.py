"""tickerTap market-data ingest: ticks to prices and OHLCV bars."""
