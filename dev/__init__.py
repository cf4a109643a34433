"""Laptop tooling: the demo, its terminal dashboard, the embedded broker, the simulated rig and the local stack.

A room beside production: nothing in the server, learner, replay or common package imports it; the
embedded broker and the dashboard's packages come with the ``dev`` extra.
"""
