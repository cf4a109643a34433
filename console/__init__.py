"""The web layer for people: inspectors label what the server doubts, operators run the model's life.

A client of the server (gRPC) and of Kafka like any plant tool; production rooms never import it.
"""
