"""Tenancy: the policy mapping principals to tenants and roles, and per-tenant enforcement."""
