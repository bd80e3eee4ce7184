"""`vlmedge bench`: accuracy on the reference models and timing on realistically shaped models, one run."""
