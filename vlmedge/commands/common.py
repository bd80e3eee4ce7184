"""Options every command that runs a model shares: where the model comes from and which backend runs it."""
from __future__ import annotations


def add_model_args(p, default_family: str = "llava_onevision") -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="local Hugging Face model directory, run with PyTorch "
                                     "(default: the bundled reference model of --family)")
    src.add_argument("--engine", help="export directory from `vlmedge export`, run with ONNX Runtime")
    src.add_argument("--tiny", action="store_true", help="a tiny randomly initialised model of --family")
    p.add_argument("--family", default=default_family, help="model family for the bundled or tiny model "
                                                            "(default: %(default)s)")


def load_model(args, words=()):
    """(adapter-like object, description) for the options of `add_model_args`."""
    from vlmedge.models import from_pretrained, tiny
    from vlmedge.models.reference_models import reference_dir

    if args.engine:
        from vlmedge.runtime.backends import load_backend

        return load_backend(args.engine), f"export {args.engine} (ONNX Runtime)"
    if args.tiny:
        from vlmedge.models.tokenizer import BASE_WORDS

        return (tiny(args.family, seed=0, words=list(BASE_WORDS) + list(words)),
                f"tiny random {args.family} (answers are noise)")
    path = args.model or reference_dir(args.family)
    return from_pretrained(path), f"model {path} (PyTorch)"
