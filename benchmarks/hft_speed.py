"""HFT vs full fine-tuning: step time, optimizer-state memory and peak memory, from one run.

Each mode runs in its own process (so peak RSS is that mode's alone) on the same model and
data, through ``throughput.py``'s worker; prints the figures and the HFT/full ratios (paper:
~30% less training time; target here: HFT <= 0.8x full's step time, clearly less optimizer memory).

    python benchmarks/hft_speed.py --model smollm2-135m --steps 12
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from throughput import parser_with_common, run_modes  # noqa: E402


def main() -> None:
    args = parser_with_common(__doc__.splitlines()[0]).parse_args()
    results = run_modes(["full", "hft"], args.model, args.steps, args.batch, args.bf16)
    full, hft = results["full"], results["hft"]
    print(f"model={args.model} steps={args.steps} batch={args.batch} bf16={args.bf16}")
    print(f"HFT/full step time:        {hft['step_time_s'] / full['step_time_s']:.3f}  (target <= 0.8)")
    print(f"HFT/full optimizer memory: {hft['optimizer_state_mb'] / full['optimizer_state_mb']:.3f}")
    print(f"HFT/full peak RSS:         {hft['peak_rss_mb'] / full['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
