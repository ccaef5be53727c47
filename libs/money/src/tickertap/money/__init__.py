"""Money, prices and quantities as Decimal: the project-wide context, assets and their scales."""
