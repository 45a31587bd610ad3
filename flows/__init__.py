"""Prefect flows and deployments only: thin orchestration over the plain-Python stages.

Importing this package (which every ``flows.*`` module and command does before Prefect is
imported) turns Prefect's telemetry off for this process and the Prefect processes it starts (a
temporary local server, a worker's flow runs): :data:`TELEMETRY_OFF` is set in the environment
unless the variable is already set, so ``PREFECT_SERVER_ANALYTICS_ENABLED=true`` or
``DO_NOT_TRACK=0`` given by the user still turns it on (``flows.local`` sets both for its server,
its worker and the ``env`` it prints, whatever the caller has).
"""
import os

# PREFECT_SERVER_ANALYTICS_ENABLED: the server's heartbeat to Prefect (an ERROR line every start
# when offline); DO_NOT_TRACK: the SDK's usage events and its first-run notice on a terminal
TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}

for _key, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_key, _value)
