"""Quality and speed of the demo model on 60 held-out prompts.

For each prompt (a shape, colour and background combination never shown in
training) it generates one image at the model's native size and default steps
and judges it: the shape's colour and the background colour (nearest palette
colour), and the shape (a classifier trained on rendered scenes). Prints the
rates next to their goals, and the seconds per image.

    .venv/bin/python bench/demo_model.py [--model models/gouache-demo] [--steps 20] [--n 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.demo import judge, scenes  # noqa: E402

GOALS = {"colours": 0.80, "shape": 0.60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "gouache-demo"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--classifier", default=str(ROOT / "var" / "bench" / "shape_classifier.pt"))
    parser.add_argument("--save", default="", help="folder to write the generated images to")
    args = parser.parse_args()

    import torch
    from diffusers import AutoPipelineForText2Image

    torch.set_num_threads(max(1, torch.get_num_threads()))
    classifier_path = Path(args.classifier)
    if not classifier_path.exists():
        report = judge.train_shape_classifier(classifier_path)
        print(f"trained the shape classifier: {report.accuracy:.1%} on fresh renders, {report.seconds:.0f} s")
    classifier = judge.load_shape_classifier(classifier_path)

    pipe = AutoPipelineForText2Image.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    prompts = scenes.held_out_prompts(args.n)
    colours = backgrounds = both = shapes = 0
    seconds = []
    for i, prompt in enumerate(prompts):
        generator = torch.Generator().manual_seed(i)
        started = time.perf_counter()
        image = pipe(
            prompt.caption,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            width=args.size,
            height=args.size,
            generator=generator,
        ).images[0]
        seconds.append(time.perf_counter() - started)
        verdict = judge.judge(image, prompt.scene, classifier)
        colours += verdict.colour_ok
        backgrounds += verdict.background_ok
        both += verdict.colour_ok and verdict.background_ok
        shapes += bool(verdict.shape_ok)
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            image.save(Path(args.save) / f"{i:02d}-{prompt.caption.replace(' ', '_')}.png")
    n = len(prompts)
    print(f"held-out prompts: {n}, {args.size}x{args.size}, {args.steps} steps, guidance {args.guidance}")
    print(f"shape colour right:          {colours / n:.1%}")
    print(f"background colour right:     {backgrounds / n:.1%}")
    print(f"both colours right:          {both / n:.1%}   (goal {GOALS['colours']:.0%})")
    print(f"shape right:                 {shapes / n:.1%}   (goal {GOALS['shape']:.0%})")
    print(f"seconds per image: median {statistics.median(seconds):.2f}, max {max(seconds):.2f}   (goal <= 5)")


if __name__ == "__main__":
    main()
