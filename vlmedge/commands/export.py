"""`vlmedge export`: a model + a compression method → ONNX stage graphs, tokenizer and a validated manifest."""
from __future__ import annotations

import argparse

import re


def register(sub) -> None:
    from vlmedge.export.manifest import EXPORT_PRECISIONS, TARGETS

    p = sub.add_parser(
        "export", help="export a model + method to ONNX graphs with a manifest",
        description="Traces each stage (embedding table, vision tower + projector, LLM prefill/decode with explicit "
                    "KV) to ONNX, checks every graph once in ONNX Runtime against torch, copies the tokenizer and "
                    "prompt/position information the runtime needs, and writes manifest.json with checksums of "
                    "every file. Run the result with the ONNX Runtime backend "
                    "(vlmedge.runtime.backends.load_backend).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="DIR", help="local Hugging Face model directory")
    src.add_argument("--tiny", metavar="FAMILY", help="a tiny randomly initialised model of FAMILY (tests, demos)")
    p.add_argument("--method", default="none", help="compression method spec, e.g. uniform:ratio=0.25 (default: none)")
    p.add_argument("--out", required=True, metavar="DIR", help="export directory to write")
    p.add_argument("--target", default="cpu", choices=TARGETS, help="device the export is meant for (default: cpu)")
    p.add_argument("--precision", default=None, choices=EXPORT_PRECISIONS,
                   help="weights and activations (default: fp32; Jetson targets: the module profile's, fp16)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default: %(default)s)")
    p.add_argument("--image-size", metavar="HxW",
                   help="frame size the vision graph is made for (Qwen families; default: the model's own)")
    p.add_argument("--max-frames", type=int, help="frames a stream is planned to hold (recorded in the manifest)")
    p.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
                   help="ONNX exporter: auto tries dynamo, then TorchScript (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --tiny model (default: 0)")
    p.add_argument("--no-check", action="store_true", help="skip running each graph once in ONNX Runtime")
    p.add_argument("--custom-ops", action=argparse.BooleanOptionalAction, default=None,
                   help="emit vlmedge domain ops (e.g. StcSelect) where a stage has them; --no-custom-ops decomposes "
                        "them into standard ONNX ops (default: on for GPU/Jetson targets, off for cpu)")
    p.add_argument("--engines", default="auto", choices=["auto", "build", "skip"],
                   help="TensorRT engines for GPU/Jetson targets: build them after the export (needs TensorRT and "
                        "the target's GPU; a Jetson target's engines are built on the Jetson), auto = build when this "
                        "machine can, else say how to build them later with `vlmedge build-engines` (default: auto)")
    p.add_argument("--force", action="store_true", help="replace the export in a non-empty --out directory")
    p.set_defaults(func=run)


def _image_size(text):
    from vlmedge.errors import InputError

    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise InputError(f"--image-size must look like HEIGHTxWIDTH (e.g. 336x448), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def run(args) -> int:
    from vlmedge.compression import get_method
    from vlmedge.errors import InputError
    from vlmedge.export.exporter import export_model, prepare_out_dir, summary_table
    from vlmedge.models.loading import adapter_class, from_pretrained, tiny

    method = get_method(args.method)  # a typo fails before any model loads
    engines_now = _engines_now(args.engines, args.target, args.out)  # an impossible --engines build fails before
    size = _image_size(args.image_size)
    import os

    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        prepare_out_dir(args.out, force=False)  # raises the "not empty, pass --force" error
    if args.tiny:
        cls = adapter_class(args.tiny)
        kwargs = {}
        if size is not None:
            if args.tiny == "llava_onevision":
                if size[0] != size[1]:
                    raise InputError("llava_onevision frames are square (SigLIP); give --image-size NxN")
                kwargs["image_size"] = size[0]
            else:
                kwargs["frame_size"] = size
        adapter = cls.tiny(seed=args.seed, **kwargs)
        source = f"tiny:{args.tiny}:seed={args.seed}"
    else:
        kwargs = {}
        if size is not None:
            from vlmedge.models.loading import _family_for, check_model_dir

            family = _family_for(check_model_dir(args.model)["model_type"])
            if family == "llava_onevision":
                raise InputError("llava_onevision's frame size is fixed by its vision config (image_size); "
                                 "--image-size applies to the Qwen families")
            kwargs["frame_size"] = size
        adapter = from_pretrained(args.model, **kwargs)
        source = os.path.abspath(args.model)
    manifest = export_model(adapter, args.out, method, target=args.target, precision=args.precision,
                            opset=args.opset, exporter=args.exporter, force=args.force, source=source,
                            max_frames=args.max_frames, check=not args.no_check, custom_ops=args.custom_ops,
                            log=lambda m: print(m, flush=True))
    print(summary_table(manifest, args.out))
    if engines_now:
        from vlmedge.export.trt.engine import build_engines, write_engine_record

        record = build_engines(args.out, args.target, "fp16", log=lambda m: print(m, flush=True))
        print(f"engines recorded in {write_engine_record(args.out, record)}")
    elif args.engines == "auto" and args.target != "cpu":
        print(f"TensorRT engines not built: {_engines_why(args.target, args.out)}\n  later, on the target: "
              f"vlmedge build-engines {args.out}")
    return 0


def _engines_why(target: str, out: str) -> str:
    from vlmedge.export.trt.engine import engines_buildable

    return engines_buildable(target, out)[1]


def _engines_now(mode: str, target: str, out: str) -> bool:
    """Whether to build engines after the export; `--engines build` that cannot happen here is an error now,
    not after minutes of exporting."""
    if mode == "skip" or (mode == "auto" and target == "cpu"):
        return False
    from vlmedge.errors import InputError
    from vlmedge.export.trt.engine import engines_buildable

    ok, why = engines_buildable(target, out)
    if mode == "build" and not ok:
        raise InputError(f"--engines build: {why}")
    return ok
