"""The learning code, in torch and without Ray: data sets and their partitions, the
models, the frozen bridge autoencoder, FedAgg's two-way distillation protocol, a
node's state, the run's plan and its pre-flight checks."""
