"""`quantfid-organism`: build, train, evaluate and describe the embedded model organism.

quantfid-organism train  --out runs/organism --minutes 75     # train from scratch (seeded)
quantfid-organism export --from runs/organism                 # copy trained files into the package
quantfid-organism eval   [--model organism] [--out DIR]       # per-family accuracy + held-out code perplexity
quantfid-organism card   [--out DIR]                          # eval + the round-to-nearest sanity sweep
quantfid-organism cohort-table --kld 8 --acc 20 --sort kld    # the cohort's bits, size, KLD and accuracy table
quantfid-organism gguf-check --quants gguf_q4_k_m            # quantfid's KLD vs llama.cpp's statistics, same tokens
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer

from quantfid.data.tasks import EVAL_PER_FAMILY
from quantfid.data.tokenizer import add_bos
from quantfid.models import ModelLoadError, ModelSpec, load_model, load_reference, load_tokenizer, organism_path
from quantfid.organism import cohort_table, gguf_check
from quantfid.organism.evaluate import heldout_code_perplexity, score_tasks, summarize
from quantfid.organism.train import TrainConfig, train
from quantfid.quant.backends.rtn import rtn_quantize_

SHIPPED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "training.json",
)
RTN_BITS = (8, 6, 4, 3, 2)


def _train(args: argparse.Namespace) -> int:
    init = str(organism_path()) if args.init_from == "organism" else args.init_from
    cfg = TrainConfig(seed=args.seed, steps=args.steps, max_minutes=args.minutes, init_from=init)
    meta = train(cfg, Path(args.out))
    print(json.dumps({k: v for k, v in meta.items() if k != "history"}, indent=1))
    return 0


def _export(args: argparse.Namespace) -> int:
    """Copy a trained organism into the package (adding the BOS post-processor to its tokenizer)."""
    src, dst = Path(args.source), organism_path()
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (src / f).exists()]
    if missing:
        print(f"error: --from {src}: missing {missing}; point it at the output directory of `train`", file=sys.stderr)
        return 2
    dst.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    tok = Tokenizer.from_file(str(dst / "tokenizer.json"))
    add_bos(tok)
    tok.save(str(dst / "tokenizer.json"))
    print(f"exported {src} -> {dst}")
    return 0


def _evaluate(name: str, n_per_family: int, out: Path | None) -> dict:
    ref = load_reference(ModelSpec(name))
    started = time.time()
    outcomes = score_tasks(ref.model, ref.tokenizer, n_per_family)
    result = {
        "model": name,
        "fingerprint": ref.fingerprint,
        "parameters": sum(p.numel() for p in ref.model.parameters()),
        "prompts": len(outcomes),
        "accuracy": summarize(outcomes),
        "heldout_code_ppl": heldout_code_perplexity(ref.model, ref.tokenizer),
        "seconds": round(time.time() - started, 1),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        outcomes.to_parquet(out / "outcomes.parquet")
        (out / "eval.json").write_text(json.dumps(result, indent=1))
    return result


def _print_accuracy(result: dict) -> None:
    print(f"model {result['model']}  fingerprint {result['fingerprint']}  params {result['parameters']:,}")
    print(f"prompts {result['prompts']}  held-out code perplexity {result['heldout_code_ppl']:.3f}")
    print("| task | accuracy |\n|---|---|")
    for task, acc in result["accuracy"].items():
        print(f"| {task} | {acc:.1%} |")


def _eval(args: argparse.Namespace) -> int:
    result = _evaluate(args.model, args.per_family, Path(args.out) if args.out else None)
    _print_accuracy(result)
    return 0


def _card(args: argparse.Namespace) -> int:
    """Everything docs/organism.md reports: accuracy per family, held-out ppl, and the RTN bits sweep."""
    out = Path(args.out) if args.out else None
    result = _evaluate(args.model, args.per_family, out)
    _print_accuracy(result)
    print("\nRound-to-nearest sanity sweep (all Linear weights but lm_head, symmetric, group 64)")
    print("| bits | overall accuracy | change vs reference | held-out code ppl |\n|---|---|---|---|")
    print(f"| ref | {result['accuracy']['overall']:.1%} | - | {result['heldout_code_ppl']:.3f} |")
    sweep = {}
    for bits in RTN_BITS:
        model = load_model(ModelSpec(args.model))
        rtn_quantize_(model, bits=bits, group_size=64)
        acc = summarize(score_tasks(model, load_reference_tokenizer(args.model), args.per_family))
        ppl = heldout_code_perplexity(model, load_reference_tokenizer(args.model))
        sweep[bits] = {"accuracy": acc, "heldout_code_ppl": ppl}
        delta = acc["overall"] - result["accuracy"]["overall"]
        print(f"| {bits} | {acc['overall']:.1%} | {delta:+.1%} | {ppl:.3f} |")
    if out is not None:
        (out / "card.json").write_text(json.dumps({**result, "rtn_sweep": sweep}, indent=1))
    return 0


def load_reference_tokenizer(name: str):
    return load_tokenizer(ModelSpec(name))


#: Subcommands with their own argument parser: everything after the name goes to it unparsed (argparse's REMAINDER
#: does not take a leading ``--option``, so they are dispatched before argparse sees them).
PASS_THROUGH = {"cohort-table": cohort_table.main, "gguf-check": gguf_check.main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASS_THROUGH:
        return PASS_THROUGH[argv[0]](argv[1:])
    parser = argparse.ArgumentParser(
        prog="quantfid-organism", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the organism from scratch")
    p.add_argument("--out", required=True, help="output directory (model, tokenizer, training.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=12000, help="optimizer steps (batch 16 x 256 tokens)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget; the schedule ends at either limit")
    p.add_argument("--init-from", default=None, help="continue training a saved organism ('organism' or a directory)")
    p.set_defaults(func=_train)
    p = sub.add_parser("export", help="copy a trained organism into the package")
    p.add_argument("--from", dest="source", required=True)
    p.set_defaults(func=_export)
    for name, func, helptext in (
        ("eval", _eval, "evaluate on the held-out sets"),
        ("card", _card, "evaluate and run the RTN sanity sweep"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", default="organism", help="'organism', a local checkpoint directory or a hub id")
        p.add_argument(
            "--per-family", type=int, default=EVAL_PER_FAMILY, help="held-out prompts per task family (1-200)"
        )
        p.add_argument("--out", default=None, help="write outcomes.parquet and eval.json here")
        p.set_defaults(func=func)
    p = sub.add_parser(
        "cohort-table", help="quantize a cohort once and print its table (see its --help)", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda a: cohort_table.main(a.rest))
    p = sub.add_parser(
        "gguf-check", help="GGUF quants: quantfid's statistics vs llama.cpp's (see its --help)", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda a: gguf_check.main(a.rest))
    args = parser.parse_args(argv)
    if not 1 <= getattr(args, "per_family", 1) <= EVAL_PER_FAMILY:
        parser.error(f"--per-family must be between 1 and {EVAL_PER_FAMILY} (the held-out prompts per family)")
    try:
        return args.func(args)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
