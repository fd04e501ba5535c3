"""Would words the caption vocabulary lacks (zebra, banana, broccoli, ...) caption better? A probe.

    python scripts/novel_words.py --weights weights --classes ../shared/data/imagenet/imagenet_classes.tsv \
        --data ../shared/data/coco-dev/dataset_cocodev.json ../shared/data/flickr8k

For each ImageNet class that the tag map leaves without a word, its own one-word name (in one of
its usual WordNet senses; with --common-only, only a name WordNet's sense-tagged texts use at least
once) is added as Deep Compositional Captioning does it (Hendricks et al. 2016, direct
transfer): its embedding and output rows copied from the first vocabulary word up its WordNet
hypernyms ("zebra" from "animal"), with the output bias lowered by --penalty so that plain search
never picks it and only a guided caption says it. The class then tags as the new word. Each data set is captioned with the weights' serving
decoding, before and after, and scored; nothing is saved.
"""
from __future__ import annotations

import argparse
import csv
from collections import deque
from pathlib import Path

import torch

from model.data import load_dataset
from model.evaluate import evaluate_split
from model.tag_map import DEFAULT_WORDNET, names, read_nouns, read_senses
from model.weights import load_weights
from runtime.captioner import Captioner, build_search
from runtime.tags import Tagger
from runtime.vocab import Vocab
from runtime.weights import load_tag_map


def transfer_source(offset: str, synsets, vocab: Vocab) -> str | None:
    """The first vocabulary word up the class's hypernyms, generic ones included."""
    queue, seen = deque([offset]), {offset}
    while queue:
        synset = synsets[queue.popleft()]
        for lemma in synset.lemmas:
            if lemma in vocab.index:
                return lemma
        for parent in synset.hypernyms:
            if parent not in seen:
                seen.add(parent)
                queue.append(parent)
    return None


def tagged_lemmas(wordnet: Path) -> set[str]:
    """The nouns WordNet's sense-tagged texts use at least once (index.noun's tagsense_cnt)."""
    lines = (line.split() for line in (wordnet / "index.noun").read_text(encoding="latin-1").splitlines() if not line.startswith(" "))
    return {fields[0] for fields in lines if int(fields[int(fields[3]) + 5]) > 0}


def extended(plain: Captioner, weights: Path, classes: Path, wordnet: Path, penalty: float, common_only: bool
             ) -> tuple[Captioner, list[tuple[str, str]]]:
    """plain (the weights at `weights`, loaded) with the added words: its CNN, reranker and tag calibration."""
    decoder, vocab, manifest = load_weights(weights)
    tag_map = load_tag_map(weights, manifest)
    synsets = read_nouns(wordnet)
    senses = read_senses(wordnet, synsets)
    common = tagged_lemmas(wordnet) if common_only else None
    with open(classes, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    added: dict[str, str] = {}
    for row, entry in zip(rows, tag_map["classes"]):
        offset = row["wnid"][1:]
        own = [lemma for lemma in synsets[offset].lemmas
               if names(lemma, offset, senses) and (common is None or lemma in common) and lemma not in vocab.index]
        source = transfer_source(offset, synsets, vocab)
        if entry["word"] is None and own and source:
            added.setdefault(own[0], source)
            entry["word"] = own[0]
    for word in added:
        tag_map["words"][word] = [word]
    new_vocab = Vocab(vocab.words + list(added))
    rows_from = torch.tensor([vocab.index[source] for source in added.values()])
    with torch.no_grad():
        decoder.embed.weight = torch.nn.Parameter(torch.cat([decoder.embed.weight, decoder.embed.weight[rows_from]]))
        decoder.out.weight = torch.nn.Parameter(torch.cat([decoder.out.weight, decoder.out.weight[rows_from]]))
        decoder.out.bias = torch.nn.Parameter(torch.cat([decoder.out.bias, decoder.out.bias[rows_from] - penalty]))
    tagger = Tagger((plain.tagger.weight, plain.tagger.bias), tag_map, plain.tagger.calibration, new_vocab.index)
    captioner = Captioner(plain.cnn, plain.preprocessing, build_search(decoder.frozen(), plain.device, plain.precision),
                          new_vocab, manifest, plain.reranker, tagger, device=plain.device)
    return captioner, sorted(added.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--classes", type=Path, required=True, help="imagenet_classes.tsv")
    parser.add_argument("--wordnet", type=Path, default=DEFAULT_WORDNET)
    parser.add_argument("--data", nargs="+", required=True, help="data sets whose validation split is scored")
    parser.add_argument("--penalty", type=float, default=10.0, help="nats taken off a new word's output bias")
    parser.add_argument("--common-only", action="store_true", help="add only names WordNet's sense-tagged texts use")
    args = parser.parse_args()
    plain = Captioner.load(args.weights)
    if plain.tagger is None:
        parser.error(f"{args.weights}: {plain.no_tags_reason}")
    novel, added = extended(plain, args.weights, args.classes, args.wordnet, args.penalty, args.common_only)
    print(f"{len(added)} words added: " + ", ".join(f"{word} (from {source})" for word, source in added))
    for data in args.data:
        dataset = load_dataset(data)
        items = dataset.split("val")
        for name, captioner in (("vocabulary as shipped", plain), ("with the added words", novel)):
            scores, _ = evaluate_split(captioner, items, captioner.decoding, meteor=False)
            print(f"{dataset.name:<10} {name:<24} CIDEr {scores['CIDEr']:.4f}  BLEU-4 {scores['BLEU-4']:.4f}  "
                  f"tag precision {scores['tag_precision']:.3f}  recall {scores['tag_recall']:.3f}", flush=True)


if __name__ == "__main__":
    main()
