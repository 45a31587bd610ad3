"""Prefect flows and deployments only: thin orchestration over the plain-Python stages."""
