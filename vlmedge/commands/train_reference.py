"""`vlmedge train-reference`: train a bundled reference model on camworld (resumable, time-budgeted)."""
from __future__ import annotations

import os


def register(sub) -> None:
    p = sub.add_parser("train-reference", help="train a small reference model from scratch on camworld",
                       description="Trains a small LLaVA-OneVision or Qwen2.5-Omni-thinker model on camworld "
                                   "training seeds (< 1,000,000). Progress is printed every 30 s; the full state is "
                                   "checkpointed to --work and the model to --out (Hugging Face layout) every few "
                                   "minutes. Running the same command again resumes.")
    p.add_argument("--family", choices=["llava_onevision", "qwen2_5_omni"], required=True)
    p.add_argument("--out", help="model folder to write (default: models/reference/<family> in the source tree)")
    p.add_argument("--work", help="training-state folder (default: <out>/../.train-<family>)")
    p.add_argument("--minutes", type=float, default=120.0, help="total training time budget (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="streams per step")
    p.add_argument("--questions", type=int, default=18, help="questions per stream")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--aux-weight", type=float, default=0.5,
                   help="weight of the dense per-token loss (colour/shape/size/quadrant of what each visual token "
                        "shows, from camworld's object boxes; a training aid, not part of the model); 0 turns it off "
                        "(default %(default)s)")
    p.add_argument("--vision-minutes", type=float, default=10.0,
                   help="from scratch: minutes of dense-only training of the vision tower and projector before the "
                        "questions start (part of --minutes; default %(default)s)")
    p.add_argument("--restart-schedule", action="store_true",
                   help="when continuing a bundled model: a fresh warm-up and cosine over the minutes still left, "
                        "instead of going on with the original schedule")
    p.add_argument("--token-drop", type=float, default=0.0,
                   help="share of training clips shown with 10-60%% of each frame's visual tokens kept (a random "
                        "subset, or the object tokens first), positions kept, so answers do not hinge on how many "
                        "tokens arrive; 0 trains on full frames only (default %(default)s)")
    p.add_argument("--token-drop-modes", default="random,objects,salient",
                   help="comma-separated selections a dropped clip draws from uniformly (random, objects, salient, "
                        "objects-salient, objects-tight; list one twice to draw it twice as often; default %(default)s)")
    p.add_argument("--ground-weight", type=float, default=0.0,
                   help="weight of the grounding loss: one attention head of --ground-layer is asked to look at the "
                        "tokens of the object each question is about (from camworld's boxes; a training aid, not part "
                        "of the model); 0 turns it off (default %(default)s)")
    p.add_argument("--ground-layer", type=int, default=-1,
                   help="decoder layer the grounding loss supervises (default: the middle one)")
    p.add_argument("--ground-head", type=int, default=0,
                   help="attention head of that layer the grounding loss supervises (default %(default)s)")
    p.add_argument("--extra-qtypes", default="",
                   help="comma-separated training-only question types, never scored: 'shape' asks the shape of a "
                        "large object of a colour, a clear-signal curriculum for the small-object question (the "
                        "only scored type whose answer is a shape); default none")
    p.add_argument("--init-from", default="",
                   help="a trained model folder of another family with the same LLM shape and tokenizer (e.g. the "
                        "bundled LLaVA-OneVision model when training the Omni one): its LLM is copied and, for "
                        "--vision-minutes, this model's vision tower learns to reproduce its frame tokens pooled to "
                        "this grid, before the questions start; a fresh run only")
    p.add_argument("--audio-weight", type=float, default=0.0,
                   help="omni: weight of the dense audio loss (the audio tower's tokens name the sound playing at "
                        "their time, from camworld's sound events; a training aid, not part of the model); "
                        "0 turns it off (default %(default)s)")
    p.add_argument("--bind-weight", type=float, default=0.0,
                   help="omni: weight of the binding loss: one attention head of --bind-layer, at the audio tokens "
                        "of a sound that announced an arriving object, is asked to look at that object's visual "
                        "tokens (a training aid for 'which sound played when X appeared', not part of the model); "
                        "0 turns it off (default %(default)s)")
    p.add_argument("--bind-layer", type=int, default=-1, help="decoder layer the binding loss supervises (default: 1)")
    p.add_argument("--bind-head", type=int, default=0,
                   help="attention head of that layer the binding loss supervises (default %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlmedge.models.training.trainer import TrainConfig, train

    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = args.out or os.path.join(here, "models", "reference", args.family)
    work = args.work or os.path.join(os.path.dirname(out), f".train-{args.family}")
    cfg = TrainConfig(family=args.family, out=out, work=work, minutes=args.minutes, seed=args.seed, batch=args.batch,
                      questions=args.questions, lr=args.lr, threads=args.threads,
                      aux_weight=args.aux_weight, vision_minutes=args.vision_minutes,
                      restart_schedule=args.restart_schedule, token_drop=args.token_drop,
                      token_drop_modes=tuple(m.strip() for m in args.token_drop_modes.split(",") if m.strip()),
                      ground_weight=args.ground_weight, ground_layer=args.ground_layer,
                      ground_head=args.ground_head,
                      extra_qtypes=tuple(q.strip() for q in args.extra_qtypes.split(",") if q.strip()),
                      init_from=args.init_from, audio_weight=args.audio_weight, bind_weight=args.bind_weight,
                      bind_layer=args.bind_layer, bind_head=args.bind_head)
    train(cfg, log=lambda m: print(m, flush=True))
    return 0
