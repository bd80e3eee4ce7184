"""vlmedge.export: stage graphs (ONNX), the manifest, and the export orchestration.

Importing this package is cheap; torch-heavy pieces load when used.
"""
from vlmedge.export.manifest import SCHEMA_VERSION, Manifest, ManifestError

__all__ = ["SCHEMA_VERSION", "Manifest", "ManifestError", "export_model"]


def export_model(*args, **kwargs):
    """See `vlmedge.export.exporter.export_model`."""
    from vlmedge.export.exporter import export_model as run

    return run(*args, **kwargs)
