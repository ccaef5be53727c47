"""tickerTap portfolio calculation: positions, cost basis, P&L, valuations."""
