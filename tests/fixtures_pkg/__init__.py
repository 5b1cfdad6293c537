"""Importable test fixtures (user programs registered by import path)."""
