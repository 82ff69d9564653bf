"""The terminal client: ``swift-trainer jobs``, ``queue`` and ``gpus`` over the HTTP API.

Unlike the operators' commands (which speak NATS and so only work next to the service),
these work from any machine that can reach the API, with the same answers the API gives.
"""
