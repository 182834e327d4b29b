"""Operating the worker: logging (`logs`), error reports (`sentry`), Prometheus metrics
(`metrics`) and Flower started safely (`dashboard`).
"""
