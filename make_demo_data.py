"""Write the embedded synthetic demo benchmark (no download): see datasets/synthetic.py.

    python make_demo_data.py --out dataset_demo --seed 0
"""
import argparse
import sys
import time

from datasets.synthetic import generate_benchmark


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="dataset_demo", help="output root folder")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--train_per_class", type=int, default=400)
    parser.add_argument("--test_per_class", type=int, default=100)
    parser.add_argument("--ood", type=int, default=600, help="images per OOD set")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        result = generate_benchmark(args.out, seed=args.seed, size=args.size,
                                    n_train_per_class=args.train_per_class,
                                    n_test_per_class=args.test_per_class, n_ood=args.ood,
                                    progress=not args.quiet)
    except ValueError as error:
        sys.exit(f"make_demo_data.py: {error}")
    state = "already complete, kept" if result["reused"] else \
        f"written in {time.perf_counter() - start:.1f} s"
    print(f"Synthetic benchmark under {args.out} ({state}):")
    folders = {"id_train": result["id_train"], "id_test": result["id_test"], **result["ood"]}
    for name, folder in folders.items():
        print(f"  {name:<20} {result['counts'][name]:>6} images  {folder}")
    print(f"  true masks: {result['gtmask_train']}, {result['gtmask_test']}")


if __name__ == "__main__":
    main()
