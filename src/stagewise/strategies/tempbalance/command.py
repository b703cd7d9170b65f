"""``stagewise spectra MODEL``: per-layer Hill alpha of a model's weights, printed and plotted."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import Field

from ...errors import StagewiseError
from ...options import ImageFile, command_options
from ...registry import COMMANDS
from ...schema import StrictModel


class SpectraOptions(StrictModel):
    xmin_pos: float = Field(gt=1)
    min_eigs: int = Field(ge=2)
    out: ImageFile


def spectra(args: argparse.Namespace) -> int:
    from ...config import ModelConfig
    from ...models import load_model_and_tokenizer
    from . import TempBalanceConfig, layer_alphas, plot_alphas

    if args.out is None:  # beside the model's weights, or here for a hub or bundled name
        args.out = str(Path(args.model if Path(args.model).is_dir() else ".") / "spectra.png")
    options = command_options(SpectraOptions, args)
    out = Path(options.out)
    model, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path=args.model, task=args.task))
    # every matrix, first and last included: this is a diagnostic, not the LR plan
    config = TempBalanceConfig(
        kind="tempbalance", xmin_pos=options.xmin_pos, min_eigs=options.min_eigs, skip_first_last=False
    )
    alphas = layer_alphas(model, config)
    if not alphas:
        raise StagewiseError(f"{args.model}: no weight matrix has {options.min_eigs} or more eigenvalues")
    width = max(len(name) for name in alphas)
    for name, alpha in alphas.items():
        print(f"{name:{width}s}  alpha={alpha:.3f}")
    values = list(alphas.values())
    print(
        f"{len(values)} matrices; alpha mean {sum(values) / len(values):.3f}, "
        f"min {min(values):.3f}, max {max(values):.3f}"
    )
    plot_alphas(alphas, out, title=f"Hill alpha per layer: {args.model}")
    print(f"wrote {out}")
    return 0


@COMMANDS.register("spectra")
def add_spectra(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("spectra", help="per-layer power-law exponent (Hill alpha) of a model's weights")
    command.add_argument("model", help="model folder, hub id or bundled name")
    command.add_argument("--task", choices=["causal_lm", "sequence_classification"], default="causal_lm")
    command.add_argument("--xmin-pos", type=float, default=2.0, help="xmin at eigenvalue index N/xmin_pos (2 = median)")
    command.add_argument("--min-eigs", type=int, default=50, help="skip matrices with fewer eigenvalues")
    command.add_argument("--out", help="PNG path (default: MODEL/spectra.png, or ./spectra.png)")
    command.set_defaults(handler=spectra)
