"""One module per dataset; each defines DATASET = DatasetSpec(...)."""
