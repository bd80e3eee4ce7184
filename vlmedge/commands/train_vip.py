"""`vlmedge train-vip`: trains GlimpsePrune's glimpse token and VIP for a model (ViT and LLM frozen)."""
from __future__ import annotations

from vlmedge.commands.common import add_model_args, load_model


def register(sub) -> None:
    p = sub.add_parser("train-vip", help="train GlimpsePrune's glimpse token and importance predictor",
                       description="Trains the glimpse token and the Visual Importance Predictor of GlimpsePrune for "
                                   "a model on camworld training streams (Dice + 0.1 BCE against object-box token "
                                   "masks + the answer's LM loss; ViT and LLM frozen) and writes them to "
                                   "<model>/glimpse/ (or --out), where `--method glimpse` finds them.")
    add_model_args(p)
    p.add_argument("--minutes", type=float, default=20.0, help="training time budget (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--accum", type=int, default=4, help="samples per optimiser step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder to write glimpse/ into (default: the model folder)")
    p.add_argument("--init", help="start from these trained modules (a glimpse/ folder or the model folder holding "
                                  "one), e.g. after the model was trained further")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlmedge.compression.glimpse.modules import GlimpseModules
    from vlmedge.compression.glimpse.train import VIPTrainConfig, train_vip
    from vlmedge.errors import InputError

    if args.engine:
        raise InputError("train-vip trains against the PyTorch model; pass --model DIR (or the bundled default)")
    if args.minutes <= 0 or args.accum < 1:
        raise InputError("--minutes must be positive and --accum at least 1")
    adapter, name = load_model(args)
    out = args.out or getattr(adapter, "model_dir", None)
    if not out:
        raise InputError("a tiny model has no folder; pass --out DIR for the trained modules")
    mods = GlimpseModules.load(args.init, adapter) if args.init else GlimpseModules.for_adapter(adapter, seed=args.seed)
    previous = dict(mods.cfg.trained)
    info = train_vip(adapter, mods, VIPTrainConfig(minutes=args.minutes, lr=args.lr, accum=args.accum, seed=args.seed))
    if previous:
        info["continued_from"] = previous
    mods.cfg.trained = info
    path = mods.save(out)
    print(f"trained GlimpsePrune modules for {name}: {info['steps']} steps in {info['minutes']:.1f} min; "
          f"validation kept {info['validation']['kept']:.1%} of tokens with {info['validation']['recall']:.1%} "
          f"recall of the question's objects; written to {path}")
    return 0
