"""The product's connections: the model, its stored documents, and the service
that reads and writes them."""
