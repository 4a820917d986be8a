"""score.py's driver: load the detector on its network, score the images, write the CSV (and maps)."""
from utils.scoring.engine import ImageScorer, write_csv


def run(args):
    scorer = ImageScorer.load(args.detector, model_path=args.model_path, device=args.device)
    print(f"[score] {scorer.describe()}")
    rows = scorer.score_paths(args.images, batch=args.batch, workers=args.workers, skip_corrupt=args.skip_corrupt,
                              maps=args.maps, progress=True)
    write_csv(args.out, rows)
    flagged = sum(row["is_ood"] for row in rows)
    print(f"[score] {len(rows)} images, {flagged} OOD at threshold {scorer.threshold:.6g}: {args.out}"
          + (f"; maps in {args.maps}" if args.maps else ""))
    return rows
