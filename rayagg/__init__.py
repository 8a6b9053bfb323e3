"""rayagg: Agglomerative Federated Learning (FedAgg) on Ray."""

__version__ = "0.1.0"
