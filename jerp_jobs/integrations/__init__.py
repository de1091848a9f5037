"""Clients of the external services the platform is deployed with (Nginx Proxy Manager)."""
