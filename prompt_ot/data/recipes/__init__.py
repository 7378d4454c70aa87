"""One module per dataset; each defines RECIPE = DatasetRecipe(...)."""
