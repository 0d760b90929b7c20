"""Grounding quality on real radiographs: the phantom's lesions drawn into the real dev films, whose lungs are known.

    .venv/bin/python bench/eval_insertion.py [--per-film 6] [--seed 0] [--config classical] [--findings-csv out.csv]

The synthetic corpus's films are phantoms; the films the dataset is built from are not. Here each real frontal film
of ../shared/data/cxr-lungs-dev (its true lung masks from torchxrayvision's archive) gets, in turn, one lesion of each
type but cardiomegaly (whose truth, the heart, the dev set does not carry), at a location and severity drawn as the
synthetic corpus draws them (`transforms.phantom.draw_into_radiograph`): the lesion's true mask is known, the
anatomy, ribs, devices and exposure around it are a real patient's. Each drawn lesion is reported as a definite
finding at its locations and goes through the configured anatomy, lesion prior and grounding, as
`eval_grounding.py --vision-only` does for the phantoms: recall, IoU with the drawn lesion's mask, and why each
missed one was discarded.

The same finding is also grounded on the film without the drawn lesion (the "invis." columns: reported, not drawn).
These are films of COVID-19 patients, many with real opacities and consolidation, so a focal finding grounded there
is not always wrong: for them the share discarded is a lower bound on what a clear film would give.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from anatomy_models.base import load_configured
from eval_anatomy import DEFAULT_DATA, load_lung_dev_set, split_sides
from eval_grounding import print_vision_table, true_finding_outcome, write_outcomes
from pipeline.config import load_config
from pipeline.synth import BASAL_LOCATIONS, EDEMA_LOCATIONS, EFFUSION_LOCATIONS, FOCAL_LOCATIONS, pick_weighted
from schemas.config import PipelineConfig
from schemas.vocab import Certainty, LesionType, Presence
from transforms.grounding import ImageToGround, ground_images
from transforms.images import decode_for_models
from transforms.masks import resize_mask
from transforms.phantom import LesionSpec, draw_into_radiograph
from transforms.records import Finding

DRAWN_TYPES = tuple(t for t in LesionType if t != LesionType.CARDIOMEGALY)
LOCATIONS = {LesionType.EFFUSION: EFFUSION_LOCATIONS, LesionType.EDEMA: EDEMA_LOCATIONS,
             LesionType.ATELECTASIS: BASAL_LOCATIONS}
MIN_TRUE_AREA = 0.002  # of the image: a drawing the lung masks clipped to less than this is drawn again


def draw_spec(rng: np.random.Generator, target: LesionType) -> LesionSpec:
    """A lesion of `target` at a location and severity drawn as the synthetic corpus draws them."""
    locations = tuple(sorted(str(x) for x in pick_weighted(rng, LOCATIONS.get(target, FOCAL_LOCATIONS))))
    return LesionSpec(targets=(str(target),), style=str(target), locations=locations, severity=float(rng.uniform(0.05, 1.0)))


def _finding(film: str, spec: LesionSpec) -> Finding:
    return Finding(finding_id=f"{film}-{spec.style}", report_id=film, study_id=film, section="drawn", sent_idx=0,
                   sentence="", entity=spec.style, presence=Presence.PRESENT.value, certainty=Certainty.DEFINITE.value,
                   reported_locations=spec.locations, mention=spec.style, char_start=0, char_end=0, structurer="drawn")


def score_insertion(data: Path, config: PipelineConfig, per_film: int, seed: int,
                    outcomes: list[dict] | None = None, types: tuple[LesionType, ...] = DRAWN_TYPES,
                    films: int | None = None) -> dict[str, dict[str, float]]:
    """`eval_grounding.print_vision_table`'s rows for `per_film` drawn lesions on each dev film (`types` in turn; the
    first `films` films of the manifest, all by default), with the same findings on the untouched films as the
    invisible ones; `outcomes` gets one row per finding."""
    rng = np.random.default_rng(seed)
    anatomy_model = load_configured(config, "anatomy")
    prior_model, refiner = load_configured(config, "lesion_prior"), load_configured(config, "refiner")
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def ground(film: str, view: str, pixels: np.ndarray, anatomy, prior, spec: LesionSpec, true: np.ndarray | None) -> None:
        (groundings,) = ground_images([ImageToGround([_finding(film, spec)], anatomy, prior, pixels, view)], refiner,
                                      config.grounding)
        outcome = true_finding_outcome(groundings[0], true, rows[spec.style])
        if outcomes is not None:
            outcomes.append({"corpus": "drawn into dev films", "dicom_id": film, **outcome})

    for index, (name, view, _, lungs) in enumerate(load_lung_dev_set(data)[:films]):
        pixels, _ = decode_for_models(data / "images" / name, config.vision.work_size)
        right, left = split_sides(resize_mask(lungs, *pixels.shape))
        if not (right.any() and left.any()):
            continue
        (untouched_anatomy,) = anatomy_model.segment([pixels])
        (untouched_prior,) = prior_model.predict([pixels], [untouched_anatomy])
        view_position = view.split()[0]  # "AP Supine" is an AP film
        for draw in range(per_film):
            target = types[(index * per_film + draw) % len(types)]
            for _ in range(20):
                spec = draw_spec(rng, target)
                drawn, true = draw_into_radiograph(rng, pixels, right, left, spec)
                if true.sum() >= MIN_TRUE_AREA * true.size:
                    break
            (anatomy,) = anatomy_model.segment([drawn])
            (prior,) = prior_model.predict([drawn], [anatomy])
            ground(name, view_position, drawn, anatomy, prior, spec, true)
            ground(name, view_position, pixels, untouched_anatomy, untouched_prior, spec, None)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the dev films: images/, manifest.csv")
    parser.add_argument("--per-film", type=int, default=len(DRAWN_TYPES), help="lesions drawn into each film, one at a time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--films", type=int, help="only the first FILMS films of the manifest")
    parser.add_argument("--config", default="classical")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--types", nargs="+", choices=[str(t) for t in DRAWN_TYPES], default=[str(t) for t in DRAWN_TYPES],
                        help="the lesion types drawn, in turn")
    parser.add_argument("--findings-csv", type=Path, help="write each finding's outcome, IoU and coverage to this CSV")
    args = parser.parse_args()
    if not (args.data / "manifest.csv").exists():
        parser.error(f"no dev films at {args.data} (expected manifest.csv and images/)")
    config = load_config(args.config, args.set)
    outcomes: list[dict] = []
    rows = score_insertion(args.data, config.config, args.per_film, args.seed, outcomes,
                           tuple(LesionType(t) for t in args.types), args.films)
    print(f"lesions drawn into the real dev films of {args.data}, {args.per_film} per film, seed {args.seed}, "
          f"config {args.config} {' '.join(args.set)}")
    print_vision_table(rows)
    if args.findings_csv:
        write_outcomes(args.findings_csv, outcomes)
        print(f"{len(outcomes)} findings' outcomes written to {args.findings_csv}")


if __name__ == "__main__":
    main()
