"""`vlmedge train-retrieval`: trains the learned retrieval score for a model (the LLM frozen)."""
from __future__ import annotations

from vlmedge.commands.common import add_model_args, load_model


def register(sub) -> None:
    p = sub.add_parser("train-retrieval", help="train the learned retrieval score for offloaded blocks",
                       description="Trains the score `retrieval_score='learned'` ranks offloaded blocks with (a probe "
                                   "on the cached values of each frame against the question's embeddings; the LLM "
                                   "stays frozen) on camworld training streams and writes it to <model>/retrieval/ "
                                   "(or --out). Prints how often an object 10 clips back is among the 7 best frames "
                                   "on held-out streams, before and after.")
    add_model_args(p)
    p.add_argument("--methods", default="uniform:ratio=0.25,none",
                   help="compression methods to play the training streams with, comma-separated: the score reads "
                        "the tokens a method keeps (default %(default)s)")
    p.add_argument("--frames", type=int, default=3000, help="training frames per method (default %(default)s)")
    p.add_argument("--val-frames", type=int, default=1200, help="held-out frames (default %(default)s)")
    p.add_argument("--minutes", type=float, default=3.0, help="training time budget (default %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--rank", type=int, default=64, help="width of the score's projections (default %(default)s)")
    p.add_argument("--window", type=int, default=170,
                   help="frames a training window holds, about what the token store keeps (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder to write retrieval/ into (default: the model folder)")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlmedge.errors import InputError
    from vlmedge.models.training.retrieval import VAL_SEED_START, RetrievalTrainConfig, collect, train_scorer
    from vlmedge.runtime.retrieval_scorer import RetrievalScorer

    if args.engine:
        raise InputError("train-retrieval trains against the PyTorch model; pass --model DIR (or the bundled default)")
    if args.minutes <= 0 or args.frames < 50 or args.val_frames < 50 or args.rank < 1 or args.window < 8:
        raise InputError("--minutes must be positive, --frames and --val-frames at least 50, --rank at least 1 and "
                         "--window at least 8")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise InputError("--methods needs at least one method spec")
    adapter, name = load_model(args)
    out = args.out or getattr(adapter, "model_dir", None)
    if not out:
        raise InputError("a tiny model has no folder; pass --out DIR for the trained score")
    scorer = RetrievalScorer.for_adapter(adapter, rank=args.rank, seed=args.seed)
    train = []
    for i, method in enumerate(methods):
        print(f"collecting {args.frames} training frames with {method} ...", flush=True)
        train.append(collect(adapter, scorer, method, args.frames, seed_start=100_000 * (i + 1)))
    print(f"collecting {args.val_frames} held-out frames with {methods[0]} ...", flush=True)
    val = collect(adapter, scorer, methods[0], args.val_frames, seed_start=VAL_SEED_START)
    info = train_scorer(adapter, scorer, train, val,
                        RetrievalTrainConfig(minutes=args.minutes, lr=args.lr, window=args.window, seed=args.seed))
    scorer.cfg.trained = {**info, "methods": methods, "frames": args.frames}
    path = scorer.save(out)
    v, b = info["validation"], info["validation_before"]
    print(f"trained the retrieval score for {name}: {info['steps']} steps in {info['minutes']:.1f} min; held-out "
          f"objects {RetrievalTrainConfig.after} clips back among the 7 best of {args.window} frames: "
          f"{v['hit@7']:.1%} (best frame {v['hit@1']:.1%}; untrained {b['hit@7']:.1%}); written to {path}")
    return 0
