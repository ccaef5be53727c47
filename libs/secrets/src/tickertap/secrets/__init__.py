"""Vault (OpenBao) access: AppRole login, dynamic database credentials, lease renewal and rotation, transit."""
