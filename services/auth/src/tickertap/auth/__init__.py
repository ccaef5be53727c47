"""tickerTap auth service: users, tokens, MFA, roles, JWKS."""
