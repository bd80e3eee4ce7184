"""Options every command that runs a model shares: where the model comes from and which backend runs it."""
from __future__ import annotations


def add_model_args(p, default_family: str = "llava_onevision") -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="local Hugging Face model directory, run with PyTorch "
                                     "(default: the bundled reference model of --family)")
    src.add_argument("--engine", help="export directory from `vlmedge export`, run with its TensorRT engines or "
                                      "ONNX Runtime (see --backend)")
    src.add_argument("--tiny", action="store_true", help="a tiny randomly initialised model of --family")
    p.add_argument("--family", default=default_family, help="model family for the bundled or tiny model "
                                                            "(default: %(default)s)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"],
                   help="what runs an --engine directory: its TensorRT engines (`vlmedge build-engines`), ONNX "
                        "Runtime, or auto = the engines when this machine can run them (default: auto)")


def model_spec(args) -> tuple[str, str]:
    """(model string for `vlmedge.runtime.model_source`, backend) for the options of `add_model_args`."""
    if args.engine:
        return args.engine, getattr(args, "backend", "auto")
    if args.tiny:
        return f"tiny:{args.family}", "torch"
    return args.model or f"reference:{args.family}", "torch"


def load_model(args, words=()):
    """(adapter-like object, description) for the options of `add_model_args`."""
    from vlmedge.runtime.model_source import open_model

    spec, backend = model_spec(args)
    return open_model(spec, backend, words=words)


def exported_method(export_dir: str) -> str:
    """The method spec an export directory was made (or tuned) for: what `--engine` runs unless told otherwise."""
    from vlmedge.export.manifest import Manifest

    return Manifest.load(export_dir, verify=False).method.spec
