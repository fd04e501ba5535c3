"""Build the map from the CNN's 1,000 ImageNet classes to the words a caption would use (tags.json).

    python -m model.tag_map --classes ../shared/data/imagenet/imagenet_classes.tsv --weights weights

Each class is a WordNet 3.0 noun synset (its wnid). Its word is its own one-word lemma where the
caption vocabulary has one ("church"), else, of the one-word lemmas of its hypernyms that the
vocabulary has, the one the training captions use most: tabby -> tabby cat -> domestic cat -> cat,
espresso -> coffee, golden retriever -> dog. The
walk up stops at generic synsets (GENERIC), so a class whose only words in the vocabulary are as
vague as "animal", "device" or "object" maps to none. OVERRIDES fixes the few classes where
WordNet's sense counts lead the walk astray. Each word also lists what else satisfies it in a
caption (runtime.tags.TagMap.satisfying_words): its plural, and the vocabulary's words for the same
synset and for its hyponyms ("puppy" and "terrier" say "dog").

Reads WordNet's database files (Debian's wordnet-base installs them under /usr/share/wordnet);
writes the map with WordNet's licence notice and lists it in the weights' manifest.
"""
from __future__ import annotations

import argparse
import csv
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from model.weights import add_tag_map
from runtime.tags import TAGS_FILE, word_forms
from runtime.vocab import Vocab
from runtime.weights import WeightsError

DEFAULT_WORDNET = Path("/usr/share/wordnet")
# Synsets whose lemmas are too vague to tell a user what is in the photo: the walk up stops at them.
GENERIC = {
    "entity", "physical_entity", "object", "whole", "thing", "artifact", "instrumentality", "device", "container",
    "structure", "covering", "equipment", "implement", "commodity", "organism", "being", "animal", "beast",
    "chordate", "vertebrate", "mammal", "placental", "invertebrate", "person", "individual", "someone", "matter",
    "substance", "food", "nutrient", "solid", "material", "part", "piece", "system", "unit", "group", "area",
    "region", "location", "geological_formation", "formation", "natural_object", "plant", "vascular_plant",
    "creation", "product", "merchandise", "article", "ware", "surface", "way", "line", "top", "cover", "furnishing",
    "decoration", "protective_covering", "overgarment", "garment", "clothing", "consumer_goods", "conveyance",
    "transport", "vehicle", "craft", "wheeled_vehicle", "self-propelled_vehicle", "machine", "mechanism", "tool",
    "worker", "adult", "organization", "vessel", "player", "instrument", "musical_instrument", "dish", "course",
    "foodstuff", "nutriment", "game", "stringed_instrument", "medium", "work",
}
SENSES = 2  # a lemma names a synset only if the synset is among its first SENSES common-noun senses
# Where WordNet's sense counts lead the walk astray: a mug's own word is "mug", but the vessel is
# only its fourth sense; ImageNet's "cup" is the drink, the photos show cups; "hose" is not what a
# caption calls a sock. Class name -> word (None: no word).
OVERRIDES = {
    "coffee mug": "cup", "cup": "cup", "mixing bowl": "bowl", "soup bowl": "bowl", "plate": "plate", "ox": "cow",
    "traffic light": "light", "television": "tv", "miniskirt": "skirt", "passenger car": "train", "sock": None,
    "Christmas stocking": None, "maypole": None, "ballplayer": "baseball", "dining table": "table", "toilet seat": "toilet",
    "seashore": "beach", "sandbar": "beach", "motor scooter": "motorcycle", "moped": "motorcycle",
}
LICENCE = (  # WordNet 3.0's licence, which asks that it go with every copy of the database or part of it
    "This software and database is being provided to you, the LICENSEE, by Princeton University under the following "
    "license. By obtaining, using and/or copying this software and database, you agree that you have read, understood, "
    "and will comply with these terms and conditions.: Permission to use, copy, modify and distribute this software and "
    "database and its documentation for any purpose and without fee or royalty is hereby granted, provided that you "
    "agree to comply with the following copyright notice and statements, including the disclaimer, and that the same "
    "appear on ALL copies of the software, database and documentation, including modifications that you make for "
    "internal use or for distribution. WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. THIS "
    "SOFTWARE AND DATABASE IS PROVIDED \"AS IS\" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, "
    "EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR "
    "WARRANTIES OF MERCHANT- ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, "
    "DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS. The "
    "name of Princeton University or Princeton may not be used in advertising or publicity pertaining to distribution "
    "of the software and/or database. Title to copyright in this software, database and any associated documentation "
    "shall at all times remain with Princeton University and LICENSEE agrees to preserve same."
)


@dataclass
class Synset:
    lemmas: list[str]  # lowercase, multi-word lemmas joined by "_"
    proper: set[str]  # the lemmas capitalised here: a name ("Crane", the poet), not a thing
    hypernyms: list[str] = field(default_factory=list)  # offsets
    hyponyms: list[str] = field(default_factory=list)


def read_nouns(wordnet: Path) -> dict[str, Synset]:
    """WordNet's data.noun: offset -> synset. A line reads
    `offset lex_filenum n w_cnt(hex) [word lex_id]... p_cnt [symbol offset pos source/target]... | gloss`."""
    synsets = {}
    for line in (wordnet / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):  # the licence header
            continue
        fields = line.split(" | ")[0].split()
        word_count = int(fields[3], 16)
        lemmas = [fields[4 + 2 * i].split("(")[0] for i in range(word_count)]  # adjective markers such as "(a)" dropped
        at = 4 + 2 * word_count
        synset = Synset([lemma.lower() for lemma in lemmas], {lemma.lower() for lemma in lemmas if not lemma.islower()})
        for i in range(int(fields[at])):
            symbol, offset, pos = fields[at + 1 + 4 * i: at + 4 + 4 * i]
            if pos != "n":
                continue
            if symbol in ("@", "@i"):
                synset.hypernyms.append(offset)
            elif symbol in ("~", "~i"):
                synset.hyponyms.append(offset)
        synsets[fields[0]] = synset
    return synsets


def read_senses(wordnet: Path, synsets: dict[str, Synset]) -> dict[str, list[str]]:
    """WordNet's index.noun: lemma -> the offsets of its common-noun senses, most frequent first
    ("crane": the machine, the bird; not Hart or Stephen Crane)."""
    senses = {}
    for line in (wordnet / "index.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        fields = line.split()
        offsets = fields[-int(fields[2]):]
        senses[fields[0]] = [offset for offset in offsets if fields[0] not in synsets[offset].proper]
    return senses


def read_plurals(wordnet: Path) -> dict[str, list[str]]:
    """Irregular plurals from WordNet's noun.exc (men -> man): word -> its plurals."""
    plurals: dict[str, list[str]] = {}
    for line in (wordnet / "noun.exc").read_text(encoding="latin-1").splitlines():
        inflected, *bases = line.split()
        for base in bases:
            plurals.setdefault(base, []).append(inflected)
    return plurals


def is_generic(synset: Synset) -> bool:
    return any(lemma in GENERIC for lemma in synset.lemmas)


def word_for(offset: str, synsets: dict[str, Synset], senses: dict[str, list[str]], vocab: Vocab) -> tuple[str, str] | None:
    """The class's caption word and the offset of the synset it names, or None where only generic
    synsets lie above the class: the class's own word where the vocabulary has one ("church",
    "dalmatian"), else of the vocabulary's words for its hypernyms the one the training captions use
    most ("dog" for a golden retriever, not "retriever"). A lemma counts for a synset that is one of
    its usual senses only: the bird called kite is "bird", since "kite" says the toy."""
    found, queue, seen = [], deque([offset]), {offset}
    while queue:
        current = queue.popleft()
        synset = synsets[current]
        if is_generic(synset):
            continue
        found += [(vocab.index[lemma], lemma, current) for lemma in synset.lemmas
                  if lemma in vocab.index and names(lemma, current, senses)]
        if found and current == offset:
            break
        for parent in synset.hypernyms:
            if parent not in seen:
                seen.add(parent)
                queue.append(parent)
    return min(found)[1:] if found else None  # a vocabulary lists its words most frequent first


def plural_forms(noun: str, plurals: dict[str, list[str]]) -> list[str]:
    return [*word_forms(noun)[1:], *plurals.get(noun, [])]


def names(lemma: str, offset: str, senses: dict[str, list[str]]) -> bool:
    """Whether the one-word lemma says the synset in one of its usual senses."""
    return "_" not in lemma and offset in senses.get(lemma, [])[:SENSES]


def satisfying_words(word: str, offset: str, synsets: dict[str, Synset], senses: dict[str, list[str]],
                     plurals: dict[str, list[str]], vocab: Vocab) -> list[str]:
    """The vocabulary's words that name the synset or one of its hyponyms, and their plurals: the word first."""
    found, queue, seen = [word], deque([offset]), {offset}
    while queue:
        current = queue.popleft()
        synset = synsets[current]
        found += [lemma for lemma in synset.lemmas if names(lemma, current, senses)]
        for child in synset.hyponyms:
            if child not in seen:
                seen.add(child)
                queue.append(child)
    forms: list[str] = []
    for name in found:
        forms += [form for form in (name, *plural_forms(name, plurals)) if form in vocab.index and form not in forms]
    return forms


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", required=True, type=Path, help="imagenet_classes.tsv: index, wnid, name")
    parser.add_argument("--weights", default=Path("weights"), type=Path,
                        help="the weights folder whose vocabulary the words must be in; the map is written there")
    parser.add_argument("--wordnet", default=DEFAULT_WORDNET, type=Path,
                        help="WordNet 3.0's database folder (Debian: apt-get install wordnet-base)")
    args = parser.parse_args(argv)
    if not (args.wordnet / "data.noun").is_file():
        parser.exit(2, f"error: no WordNet 3.0 database in {args.wordnet}: apt-get install wordnet-base, or pass --wordnet\n")
    synsets, plurals = read_nouns(args.wordnet), read_plurals(args.wordnet)
    senses = read_senses(args.wordnet, synsets)
    vocab = Vocab.load(args.weights / "vocab.json")
    with open(args.classes, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    classes, words = [], {}
    for row in rows:
        if row["name"] in OVERRIDES:
            word = OVERRIDES[row["name"]]
            found = (word, senses[word][0]) if word else None
        else:
            found = word_for(row["wnid"][1:], synsets, senses, vocab)
        classes.append({"name": row["name"], "wnid": row["wnid"], "word": found[0] if found else None})
        if found and found[0] not in words:
            words[found[0]] = satisfying_words(*found, synsets, senses, plurals, vocab)
    tag_map = {"licence": LICENCE, "classes": classes, "words": dict(sorted(words.items()))}
    mapped = sum(entry["word"] is not None for entry in classes)
    try:
        add_tag_map(args.weights, tag_map, {
            "map": f"each of the {len(classes)} ImageNet classes to its own word in the caption vocabulary, else its "
                   f"WordNet 3.0 hypernyms' most used one, generic synsets excluded ({mapped} classes map to {len(words)} "
                   "words); made by python -m model.tag_map"})
    except WeightsError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"{args.weights / TAGS_FILE}: {mapped} of {len(classes)} classes map to {len(words)} words")


if __name__ == "__main__":
    main()
