"""`mimic-ils vocab mine` and `mimic-ils vocab apply`: the files around transforms/vocab_mining.py.

mine:  corpus -> OUT/review.yaml (groups for a curator: phrases, counts, examples, proposed mapping, accept: false)
       and OUT/manifest.json (input, reader, vocabulary, mining words, which embedding, counts, timings).
apply: a reviewed review.yaml -> a vocabulary overlay YAML that `extends` the base vocabulary with the accepted
       phrases, for `structuring.vocabulary: PATH` in a config.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from configs import VOCABULARY_DIR
from pipeline.corpus import corpus_reports
from pipeline.errors import UserError
from schemas.config import CorpusConfig
from transforms.structuring import RuleStructurer, load_vocabulary
from transforms.vocab_mining import PhraseMiner, load_mining_config, make_embedder, overlay_from_review, review_groups

REVIEW_FILE = "review.yaml"
MANIFEST_FILE = "manifest.json"
REVIEW_HEADER = """\
# Vocabulary review (mimic-ils vocab mine). For each group: set `accept: true` to add its phrases to the
# vocabulary, after checking where they go: location groups become zone words when `zone` is set (apical, upper,
# mid, base, lung: side words before them then compose, "right lung bases"), else phrases naming `locations`
# (CXAS names) outright (set zone: null to use them); lesion groups join the list of `target` (a lesion type,
# other_findings or not_lesions). Delete the phrases of a group you do not want. `score` is the cosine similarity
# of the group and `nearest_known`, the vocabulary phrase the proposal comes from; `unlocated` counts occurrences in
# sentences with a present finding that got no location. Then: mimic-ils vocab apply --review THIS --output FILE
"""


def mine_vocabulary(input_path: Path, output: Path, vocabulary: str, reader: str | None = None,
                    corpus: CorpusConfig | None = None, mining: str = "en_cxr", model: str | None = None,
                    overwrite: bool = False) -> dict:
    """Mine the corpus at `input_path` with `reader` (default: the one that recognises the path; it takes the
    config's `corpus.options` when it is the config's reader); write the review file and manifest into `output`."""
    if not input_path.exists():
        raise UserError(f"input not found: {input_path}")
    if (output / REVIEW_FILE).exists() and not overwrite:
        raise UserError(f"{output} holds a review file already (reviewed, maybe): choose another --output or pass "
                        "--overwrite")
    corpus = corpus or CorpusConfig()
    name, reports = corpus_reports(input_path, corpus, reader)
    try:
        config = load_mining_config(mining)
        embedder = make_embedder(model)  # a bad model folder is refused before the corpus is read
        structurer = RuleStructurer(load_vocabulary(vocabulary))
        started = time.perf_counter()
        result = PhraseMiner(structurer, config).mine(reports)
        mined_seconds = time.perf_counter() - started
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise UserError(str(exc).replace("\n", " ")) from None
    started = time.perf_counter()
    groups = review_groups(result.phrases, structurer.vocabulary, embedder, config)
    clustered_seconds = time.perf_counter() - started
    kinds = {kind: [g for g in groups if g.kind == kind] for kind in ("location", "lesion")}
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": metadata.version("mimic-ils"),
        "input": str(input_path.resolve()), "reader": name,
        "reader_options": corpus.options if name == corpus.reader else {},
        "vocabulary": vocabulary, "mining_config": config.name, "embedding": embedder.describe(),
        "clustering": config.clustering.model_dump(),
        "counts": {"reports": result.n_reports, "sentences_searched": result.n_sentences,
                   **{f"{kind}_phrases": sum(len(g.phrases) for g in of_kind) for kind, of_kind in kinds.items()},
                   **{f"{kind}_occurrences": sum(g.frequency for g in of_kind) for kind, of_kind in kinds.items()},
                   **{f"{kind}_clusters": sum(g.cluster is not None for g in of_kind)
                      for kind, of_kind in kinds.items()}},
        "seconds": {"mining": round(mined_seconds, 3), "embedding_and_clustering": round(clustered_seconds, 3)},
    }
    review = {"vocabulary": vocabulary, "input": manifest["input"], "embedding": manifest["embedding"],
              "groups": [g.as_review() for g in groups]}
    output.mkdir(parents=True, exist_ok=True)
    (output / REVIEW_FILE).write_text(REVIEW_HEADER + yaml.safe_dump(review, sort_keys=False, allow_unicode=True,
                                                                     width=120), encoding="utf-8")
    (output / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def apply_review(review_path: Path, output: Path, vocabulary: str | None = None) -> dict:
    """Write the overlay of the accepted groups of `review_path` to `output`; return phrases added per list."""
    if not review_path.is_file():
        raise UserError(f"review file not found: {review_path}")
    review = yaml.safe_load(review_path.read_text(encoding="utf-8")) or {}
    base = vocabulary or review.get("vocabulary")
    if not base:
        raise UserError("the review file names no vocabulary: give --vocabulary NAME|PATH")
    shipped = (VOCABULARY_DIR / f"{base}.yaml").is_file() and not str(base).endswith((".yaml", ".yml"))
    extends = base if shipped else str(Path(base).expanduser().resolve())
    try:
        overlay, added = overlay_from_review(review, load_vocabulary(str(base)), extends,
                                             f"{Path(str(base)).stem}+{output.stem}")
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(f"{review_path}: {exc}") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(f"# Vocabulary overlay from {review_path.resolve()} (mimic-ils vocab apply).\n"
                      + yaml.safe_dump(overlay, sort_keys=False, allow_unicode=True, width=120), encoding="utf-8")
    try:
        load_vocabulary(str(output))
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(f"the overlay {output} is not a valid vocabulary: {exc}") from None
    return dict(added)
