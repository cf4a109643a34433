"""Benchmarks: every figure the README quotes, printed as ratios measured side by side.

A room beside production: nothing in the server, learner, replay or common package imports it, and
its heavy packages (Avalanche, matplotlib, quadprog) come with the ``bench`` extra.
"""
