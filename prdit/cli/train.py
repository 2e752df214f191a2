"""``prdit train`` (and the seed-compatible ``train.py``): one PRDiT stage, or both."""

from __future__ import annotations

import argparse
from pathlib import Path

from prdit.cli.common import add_config_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a PRDiT stage (or both) on a config",
        description=(
            "Train PRDiT. Stage 1 (depth 0) trains the local denoiser; stage 2 (depth > 0) loads the stage-1 checkpoint "
            "from model.pretrained_path, freezes it and trains the global residual DiT. Multi-GPU: "
            "torchrun --nproc_per_node=N train.py --config X.yaml"
        ),
    )
    add_config_arguments(parser)
    parser.add_argument("--resume_training", "--resume", dest="resume", action="store_true",
                        help="continue the latest run of this config (or --run-dir) exactly where its last checkpoint stopped")
    parser.add_argument("--debug", action="store_true", help="tiny smoke run: 8 steps, batch 2, logs every step, results/debug/")
    parser.add_argument("--from_scratch", "--from-scratch", dest="from_scratch", action="store_true",
                        help="random initialisation for every part (ignore model.pretrained_path, freeze nothing)")
    parser.add_argument("--init-from", "--init_from", dest="init_from", default=None,
                        help="weights to start from (fine-tuning, or a 128^3 run for a 256^3 model): a run folder, a checkpoint "
                             "(.pt), an exported .safetensors file or bundle folder, an official checkpoint, or a "
                             "shipped model by name (phantom-32); overrides model.pretrained_path")
    parser.add_argument("--allow-config-change", dest="allow_config_change", action="store_true",
                        help="resume with settings that break an exact continuation (e.g. another training.lr), or start "
                             "from pretrained weights trained on another intensity mapping; each change is printed "
                             "(and on resume logged in the run's log.jsonl)")
    parser.add_argument("--run-dir", dest="run_dir", default=None, help="run folder to resume (default: the newest run of this config)")
    parser.add_argument("--stages", choices=["both"], default=None,
                        help="both: run the stage-1 config, then the stage-2 config initialised from its checkpoint")
    parser.add_argument("--stage2-config", dest="stage2_config", default=None,
                        help="stage-2 config for --stages both (default: global.yaml next to --config)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (for logs)")
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from prdit.config import load_config
    from prdit.runtime import configure_cpu_threads, keep_freed_memory
    from prdit.train.trainer import TrainOptions, train

    configure_cpu_threads()
    keep_freed_memory()
    options = TrainOptions(resume=args.resume, debug=args.debug, from_scratch=args.from_scratch, init_from=args.init_from,
                           run_dir=args.run_dir, progress=args.progress, allow_config_change=args.allow_config_change)
    config = load_config(args.config, args.overrides)
    if args.stages != "both":
        print(f"run folder: {train(config, options)}")
        return
    stage2_path = Path(args.stage2_config) if args.stage2_config else Path(args.config).with_name("global.yaml")
    stage2 = load_config(stage2_path, args.overrides)
    stage1_dir = train(config, options)
    print(f"stage 1 done: {stage1_dir}")
    print(f"stage 2 done: {train(stage2.with_pretrained(stage1_dir), TrainOptions(debug=args.debug, progress=args.progress))}")
