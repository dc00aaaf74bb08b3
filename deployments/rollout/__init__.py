"""Rollout control plane: spec, pure state machine, analysis, statistics, persistence, reports.

Everything here is free of Serve and MLflow I/O except :mod:`store` (files) and
:mod:`report` (files); :mod:`deployments.controller` wires it to Serve and the registry.
"""
