"""Our near-OOD and far-OOD mean AUROC beside OpenOOD v1.5's published CIFAR table.

OpenOOD v1.5 (Zhang et al., 2023, arXiv 2306.09301) benchmarks a ResNet-18 trained with plain
cross-entropy for 100 epochs (SGD, lr 0.1, momentum 0.9, weight decay 5e-4, batch 128) at 32 px,
mean ± std of 3 training runs. The figures below are copied from the leaderboard CSVs
`results/cifar10.csv` and `results/cifar100.csv` of zjysteven/OpenOOD at commit 28d3a40 (2025-07-19),
the leaderboard the Jingkang50/OpenOOD README links. Their near-OOD group is the other CIFAR and
Tiny ImageNet (classes overlapping CIFAR removed), their far-OOD group MNIST, SVHN, Textures and
Places365; their scores' hyper-parameters are chosen on a validation split, and their FPR@95 treats
OOD as the positive class, so only AUROC is laid beside ours.
"""
from datasets.shared_archives import OOD_SETS
from reporting.tables import DASH, markdown_table, pct, pct_spread

# (mean, std) in %, per ID set
OPENOOD_ID_ACCURACY = {"cifar10": (95.06, 0.30), "cifar100": (77.25, 0.10)}
# our score name -> (OpenOOD's name, {ID set: ((near mean, std), (far mean, std))}), AUROC in %
OPENOOD_AUROC = {
    "MSP": ("MSP", {"cifar10": ((88.03, 0.25), (90.73, 0.43)), "cifar100": ((80.27, 0.11), (77.76, 0.44))}),
    "ODIN": ("ODIN", {"cifar10": ((82.87, 1.85), (87.96, 0.61)), "cifar100": ((79.90, 0.11), (79.28, 0.21))}),
    "Mahalanobis": ("MDS", {"cifar10": ((84.20, 2.40), (89.72, 1.36)), "cifar100": ((58.69, 0.09), (69.39, 1.39))}),
    "Energy": ("EBO", {"cifar10": ((87.58, 0.46), (91.21, 0.92)), "cifar100": ((80.91, 0.08), (79.77, 0.61))}),
    "ReAct": ("ReAct", {"cifar10": ((87.11, 0.61), (90.42, 1.41)), "cifar100": ((80.77, 0.05), (80.39, 0.49))}),
    "MaxLogit": ("MLS", {"cifar10": ((87.52, 0.47), (91.10, 0.89)), "cifar100": ((81.05, 0.07), (79.67, 0.57))}),
    "ViM": ("ViM", {"cifar10": ((88.68, 0.28), (93.48, 0.24)), "cifar100": ((74.98, 0.13), (81.70, 0.62))}),
    "KNN": ("KNN", {"cifar10": ((90.64, 0.20), (92.96, 0.14)), "cifar100": ((80.18, 0.15), (82.40, 0.17))}),
    "GEN": ("GEN", {"cifar10": ((88.20, 0.30), (91.35, 0.69)), "cifar100": ((81.31, 0.08), (79.68, 0.75))}),
}
GROUPS = ("near-OOD", "far-OOD")  # the order of the pairs above
MSP_REGIME_POINTS = 3.0  # the sign that a network is in OpenOOD's regime: MSP far-OOD within this


def _published(mean_std):
    return f"{mean_std[0]:.2f} ± {mean_std[1]:.2f}"


def msp_regime_line(id_name, our_far_msp):
    """Met or missed: our classifier's plain MSP far-OOD mean AUROC (a fraction) within
    MSP_REGIME_POINTS of OpenOOD's."""
    theirs = OPENOOD_AUROC["MSP"][1][id_name][1][0]
    gap = 100 * our_far_msp - theirs
    verdict = "within" if abs(gap) <= MSP_REGIME_POINTS else "NOT within"
    return (f"Our classifier's MSP far-OOD mean AUROC {100 * our_far_msp:.2f} against OpenOOD's {theirs:.2f} "
            f"({gap:+.2f} points): {verdict} {MSP_REGIME_POINTS:g} points.")


def protocol_notes(settings, groups):
    """The differences between this run's protocol and OpenOOD's, read from the run's settings and
    datasets/shared_archives.py's description of each OOD set."""
    pretrained = settings.get("PRETRAINED", "none")
    start = "from scratch" if pretrained in ("", "none") else f"from `{pretrained}`"
    notes = [f"Network: ours `{settings.get('MODEL', '?')}` at {settings.get('RESOLUTION', '?')} px, "
             f"{settings.get('STEPS_CLS', '?')} steps of {settings.get('BATCH', '?')} images, {start}; OpenOOD's a "
             f"ResNet-18 at 32 px, 100 epochs of 50,000 images, from scratch."]
    for name, oods in groups.items():
        for ood in oods:
            entry = OOD_SETS[ood]
            notes.append(f"{name} {ood}: {entry.content}; stands for {entry.stands_for}.")
    notes.append("Hyper-parameters of the scores: ours are fixed defaults (eval.py's flags; DFB's fusion weight "
                 "and direction chosen on held-out ID images and patch-shuffled pseudo-OOD images); OpenOOD "
                 "tunes each score on ID and OOD validation images held apart from its test sets.")
    return notes


def openood_section(run, cls_accuracy):
    """Markdown lines: per score, our classifier's x and the DFB-fused x (mean ± std over seeds) beside
    OpenOOD v1.5's ResNet-18 x, near-OOD and far-OOD mean AUROC, and the differences of protocol; empty
    when the run's ID set has no OpenOOD figures or its OOD sets fill neither group."""
    groups = dict(run.openood_groups())
    if run.id_name not in OPENOOD_ID_ACCURACY or not any(name in groups for name in GROUPS):
        return []
    header = ["score (OpenOOD's name)"]
    for name in GROUPS:
        header += [f"{name}: classifier", f"{name}: DFB-x", f"{name}: OpenOOD ResNet-18"]
    rows = []
    for method in run.base_methods:
        if method not in OPENOOD_AUROC:
            continue
        theirs_name, theirs = OPENOOD_AUROC[method]
        row = [method if theirs_name == method else f"{method} ({theirs_name})"]
        for index, name in enumerate(GROUPS):
            if name not in groups:
                row += [DASH, DASH, _published(theirs[run.id_name][index])]
                continue
            row += [pct(run.cls_average(method, "auroc", groups[name])),
                    pct_spread(run.dfb_average(f"DFB-{method}", "auroc", groups[name])),
                    _published(theirs[run.id_name][index])]
        rows.append(row)
    accuracy = OPENOOD_ID_ACCURACY[run.id_name]
    described = "; ".join(f"{name}: {', '.join(oods)}" for name, oods in groups.items())
    lines = ["## Beside OpenOOD v1.5", "",
             f"Mean AUROC (%) over each group's sets ({described}). "
             f"*classifier*: the score on our K-class classifier (one network); *DFB-x*: fused with the DFB "
             f"network's background logit, mean ± std over the DFB seeds; *OpenOOD*: ResNet-18, mean ± std of "
             f"3 training runs (`reporting/openood_table.py` holds the figures and their source). ID test top-1: "
             f"ours {100 * cls_accuracy['top1']:.2f} %, OpenOOD's {_published(accuracy)} %.", ""]
    lines += markdown_table(header, rows) + [""]
    if "far-OOD" in groups and "MSP" in run.base_methods:
        lines += [msp_regime_line(run.id_name, run.cls_average("MSP", "auroc", groups["far-OOD"])), ""]
    notes = protocol_notes(run.info["settings"], groups)
    lines += ["Differences of protocol:", ""] + [f"- {note}" for note in notes] + [""]
    return lines
